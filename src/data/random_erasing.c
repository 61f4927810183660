// timm's RandomErasing with counter-based draws: the gate and the count come from one Philox
// call, each (box, attempt) from its own, the colours of box b from another, and per-pixel
// noise from a key derived from (seed, epoch, index), so a sample's boxes and noise do not
// depend on threads or on the other samples. Noise is drawn directly as vit's bytes (the
// normal's inverse CDF, discretised to bytes) rather than as floats converted afterwards.
#include "data/random_erasing.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include "util/rng.h"
#include "util/status.h"

#define TAG_ERASE 0x45000000u        // + 0: gate and count; + 1 + 256 b + t: box b, attempt t
#define TAG_ERASE_COLOR 0x46000000u  // + b: the colour of box b (mode rand)
#define TAG_ERASE_KEY 0x47000000u    // the key of the per-pixel noise (mode pixel)
#define TAG_NOISE 0x6e6f6973u

void erase_defaults(EraseConfig *e) {
    e->prob = 0.0f;
    e->mode = ERASE_PIXEL;
    e->max_count = 1;
    e->area_min = 0.02;
    e->area_max = 1.0 / 3.0;
    e->log_aspect_min = log(0.3);
    e->log_aspect_max = log(1.0 / 0.3);
    e->attempts = 10;
}

int erase_parse_mode(const char *s, EraseMode *mode, const char *flag) {
    if (!strcasecmp(s, "pixel")) *mode = ERASE_PIXEL;
    else if (!strcasecmp(s, "const")) *mode = ERASE_CONST;
    else if (!strcasecmp(s, "rand")) *mode = ERASE_RAND;
    else return vit_fail("%s %s: expected pixel, const or rand", flag, s);
    return VIT_OK;
}

static Philox4 draw(uint64_t seed, uint32_t epoch, uint64_t index, uint32_t tag) {
    return philox4x32(seed, (uint32_t)index, (uint32_t)(index >> 32), epoch, tag);
}

static double u01(uint32_t bits) { return (double)bits / 4294967296.0; }

static int uniform_int(uint32_t bits, int n) { return (int)(((uint64_t)bits * (uint32_t)n) >> 32); }

int erase_boxes(const EraseConfig *e, int width, int height, uint64_t seed, uint32_t epoch, uint64_t index,
                EraseBox *boxes) {
    if (!(e->prob > 0) || width < 1 || height < 1) return 0;
    Philox4 g = draw(seed, epoch, index, TAG_ERASE);
    if (!(e->prob >= 1.0f || rng_u01(g.v[0]) < e->prob)) return 0;
    int max_count = e->max_count < ERASE_MAX_COUNT ? e->max_count : ERASE_MAX_COUNT;
    int count = max_count <= 1 ? 1 : 1 + uniform_int(g.v[1], max_count);
    const double area = (double)width * height;
    int n = 0;
    for (int b = 0; b < count; b++) {
        for (int t = 0; t < e->attempts && t < 256; t++) {
            Philox4 r = draw(seed, epoch, index, TAG_ERASE + 1u + 256u * (uint32_t)b + (uint32_t)t);
            double target = (e->area_min + (e->area_max - e->area_min) * u01(r.v[0])) * area / count;
            double aspect = exp(e->log_aspect_min + (e->log_aspect_max - e->log_aspect_min) * u01(r.v[1]));
            // Python's round(): half to even, which rint does in the default rounding mode.
            int h = (int)rint(sqrt(target * aspect)), w = (int)rint(sqrt(target / aspect));
            if (w < width && h < height) {
                boxes[n].y = uniform_int(r.v[2], height - h + 1);  // randint(0, H - h), inclusive
                boxes[n].x = uniform_int(r.v[3], width - w + 1);
                boxes[n].w = w, boxes[n].h = h;
                n++;
                break;
            }
        }
    }
    return n;
}

uint8_t erase_byte(double z) {
    double v = floor(127.5 * (z + 1.0) + 0.5);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Normal noise straight as bytes: byte k stands for the z interval where 127.5 (z + 1) rounds
// to k, so a 16-bit uniform maps to its byte through the inverse CDF of that discretised
// normal (each byte's probability within 2^-16 of the exact one). Built once.
static uint8_t g_normal_byte[65536];
static pthread_once_t g_normal_once = PTHREAD_ONCE_INIT;

static void build_normal_table(void) {
    int k = 0;
    // Upper end of byte k's interval in z, and its probability below, in units of 2^-16.
    double next = 0.5 * erfc(-((0.5 / 127.5 - 1.0) / sqrt(2.0))) * 65536.0;
    for (int i = 0; i < 65536; i++) {
        while (k < 255 && i + 0.5 >= next) {
            k++;
            next = 0.5 * erfc(-(((k + 0.5) / 127.5 - 1.0) / sqrt(2.0))) * 65536.0;
        }
        g_normal_byte[i] = (uint8_t)k;
    }
}

// Per-element noise of box b: element k (row-major, channels interleaved) is byte k of the
// stream (key, b), 8 per Philox call.
static void fill_noise(uint8_t *px, int width, int ch, const EraseBox *bx, uint64_t key, uint32_t b) {
    const size_t row = (size_t)bx->w * ch;
    uint64_t k = 0;
    uint16_t u[8];
    for (int y = 0; y < bx->h; y++) {
        uint8_t *o = px + ((size_t)(bx->y + y) * width + bx->x) * ch;
        for (size_t i = 0; i < row; i++, k++) {
            if ((k & 7) == 0) {
                Philox4 r = philox4x32(key, (uint32_t)(k >> 3), (uint32_t)(k >> 35), b, TAG_NOISE);
                memcpy(u, r.v, sizeof u);
            }
            o[i] = g_normal_byte[u[k & 7]];
        }
    }
}

void random_erase(const EraseConfig *e, uint8_t *px, int width, int height, int channels, uint64_t seed,
                  uint32_t epoch, uint64_t index) {
    EraseBox boxes[ERASE_MAX_COUNT];
    int n = erase_boxes(e, width, height, seed, epoch, index, boxes);
    if (!n) return;
    pthread_once(&g_normal_once, build_normal_table);
    uint64_t key = 0;
    if (e->mode == ERASE_PIXEL) {
        Philox4 r = draw(seed, epoch, index, TAG_ERASE_KEY);
        key = (uint64_t)r.v[0] | (uint64_t)r.v[1] << 32;
    }
    for (int b = 0; b < n; b++) {
        const EraseBox *bx = &boxes[b];
        if (e->mode == ERASE_PIXEL) {
            fill_noise(px, width, channels, bx, key, (uint32_t)b);
            continue;
        }
        uint8_t colour[3] = {128, 128, 128};  // const: z = 0
        if (e->mode == ERASE_RAND) {
            Philox4 r = draw(seed, epoch, index, TAG_ERASE_COLOR + (uint32_t)b);
            uint16_t u[8];
            memcpy(u, r.v, sizeof u);
            for (int c = 0; c < 3; c++) colour[c] = g_normal_byte[u[c]];
        }
        for (int y = 0; y < bx->h; y++) {
            uint8_t *o = px + ((size_t)(bx->y + y) * width + bx->x) * channels;
            for (int x = 0; x < bx->w; x++)
                for (int c = 0; c < channels; c++) o[(size_t)x * channels + c] = colour[c];
        }
    }
}
