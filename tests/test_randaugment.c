// timm's RandAugment and RandomErasing in vit's loader:
// - every op at fixed arguments against timm's own output (tests/fixtures/randaug_ops.bin,
//   written by tools/make_randaug_fixtures.py through timm and Pillow), within 1 per byte;
// - the level-to-argument functions and the parsed policies against timm's, and one-line
//   errors for bad policies, erase modes, probabilities and counts;
// - the random decisions over many draws: op choice, probability gate, magnitude noise and
//   clamping, sign flips, resample choice, weighted choice without replacement;
// - random erasing's boxes (gate, count, area, aspect, placement) and fill modes;
// - where RandAugment sits in augment_train (on the finished RGB crop; luma after it), and
//   identical loader batches for 1 and 3 threads. Ends with a speed print per op at 224.
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "data/augment.h"
#include "data/loader.h"
#include "data/randaugment.h"
#include "data/random_erasing.h"
#include "testdir.h"
#include "util/clock.h"
#include "util/status.h"

static int op_by_name(const char *name) {
    for (int i = 0; i < RA_OP_COUNT; i++)
        if (!strcmp(randaug_op_name((RandAugOp)i), name)) return i;
    return -1;
}

// ---------------------------------------------------------------- ops against timm

typedef struct {
    uint32_t w, h, ch;
    uint8_t *px;
} FixImage;

static int read_u32(FILE *f, uint32_t *v) { return fread(v, 4, 1, f) == 1; }

static void test_ops_fixture(void) {
    const char *path = "tests/fixtures/randaug_ops.bin";
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "fixture %s", path);
    if (!f) return;
    char magic[4];
    uint32_t nimg = 0, ncase = 0;
    int ok = fread(magic, 4, 1, f) == 1 && !memcmp(magic, "RAG1", 4) && read_u32(f, &nimg) && nimg <= 8;
    FixImage img[8] = {{0}};
    for (uint32_t i = 0; ok && i < nimg; i++) {
        ok = read_u32(f, &img[i].w) && read_u32(f, &img[i].h) && read_u32(f, &img[i].ch) && img[i].w <= 256 &&
             img[i].h <= 256 && (img[i].ch == 1 || img[i].ch == 3);
        size_t n = ok ? (size_t)img[i].w * img[i].h * img[i].ch : 0;
        ok = ok && (img[i].px = malloc(n)) && fread(img[i].px, 1, n, f) == n;
    }
    ok = ok && read_u32(f, &ncase);
    int cases = 0, exact = 0, worst = 0, worst_case = -1, families[RA_OP_COUNT] = {0};
    long bytes = 0, differ = 0;
    uint8_t *got = malloc(256 * 256 * 3), *want = malloc(256 * 256 * 3), *scratch = malloc(2 * (256 * 256 * 3 + 16));
    const uint8_t fill[3] = {128, 128, 128};
    for (uint32_t k = 0; ok && k < ncase; k++) {
        char name[25] = {0};
        uint32_t im;
        int32_t resample;
        double arg;
        ok = fread(name, 24, 1, f) == 1 && read_u32(f, &im) && im < nimg && fread(&resample, 4, 1, f) == 1 &&
             fread(&arg, 8, 1, f) == 1;
        if (!ok) break;
        const FixImage *s = &img[im];
        size_t n = (size_t)s->w * s->h * s->ch;
        ok = fread(want, 1, n, f) == n;
        int op = op_by_name(name);
        CHECK(op >= 0, "fixture op %s known", name);
        if (!ok || op < 0) break;
        memcpy(got, s->px, n);
        randaug_apply_op((RandAugOp)op, arg, resample ? resample : RA_BILINEAR, fill, got, (int)s->w, (int)s->h,
                         (int)s->ch, scratch);
        int maxd = 0, diffs = 0;
        for (size_t i = 0; i < n; i++) {
            int d = abs((int)got[i] - (int)want[i]);
            diffs += d != 0;
            maxd = d > maxd ? d : maxd;
        }
        CHECK(maxd <= 1, "%s(%g, resample %d) on %ux%ux%u: max difference %d from timm (%d bytes differ)", name, arg,
              resample, s->w, s->h, s->ch, maxd, diffs);
        cases++;
        exact += maxd == 0;
        bytes += (long)n, differ += diffs;
        families[op]++;
        if (maxd > worst) worst = maxd, worst_case = (int)k;
    }
    CHECK(ok && fgetc(f) == EOF && cases > 50, "fixture %s read whole (%d cases)", path, cases);
    int covered = 0;
    for (int i = 0; i < RA_OP_COUNT; i++) covered += families[i] > 0;
    CHECK(covered == 15, "every op family has fixture cases (%d)", covered);
    // Pillow's arithmetic is reproduced operation for operation (bit-exact with GCC here); a
    // compiler that fuses multiply-adds may move a rare truncation by 1, never many bytes.
    CHECK(differ * 1000 <= bytes, "at most 0.1%% of bytes off by 1 (%ld of %ld)", differ, bytes);
    printf("ops vs timm: %d cases, %d bit-exact, max difference %d (case %d), %ld of %ld bytes differ\n", cases,
           exact, worst, worst_case, differ, bytes);
    fclose(f);
    for (uint32_t i = 0; i < nimg; i++) free(img[i].px);
    free(got), free(want), free(scratch);
}

// Posterize to 0 bits: Pillow >= 12 raises (so timm does); vit keeps 0 bits, as older Pillow.
static void test_posterize_zero(void) {
    uint8_t px[12] = {0, 1, 127, 128, 200, 255, 3, 4, 5, 6, 7, 8}, s[12];
    const uint8_t fill[3] = {128, 128, 128};
    randaug_apply_op(RA_POSTERIZE, 0, RA_BILINEAR, fill, px, 2, 2, 3, s);
    int zero = 1;
    for (int i = 0; i < 12; i++) zero &= px[i] == 0;
    CHECK(zero, "posterize to 0 bits gives black");
    uint8_t q[3] = {255, 130, 1};
    randaug_apply_op(RA_POSTERIZE_INC, 8, RA_BILINEAR, fill, q, 1, 1, 3, s);
    CHECK(q[0] == 255 && q[1] == 130 && q[2] == 1, "posterize to 8 bits leaves the image");
}

static void test_levels(void) {
    FILE *f = fopen("tests/fixtures/randaug_levels.txt", "r");
    CHECK(f != NULL, "fixture tests/fixtures/randaug_levels.txt");
    if (!f) return;
    char name[64];
    double m, want;
    int neg, lines = 0, bad = 0;
    while (fscanf(f, "%63s %lf %d %lf", name, &m, &neg, &want) == 4) {
        int op = op_by_name(name);
        double got = op >= 0 ? randaug_op_arg((RandAugOp)op, m, neg, 0.45) : NAN;
        if (!(got == want)) {
            bad++;
            if (bad < 5) fprintf(stderr, "level %s m %g negate %d: %.17g, timm %.17g\n", name, m, neg, got, want);
        }
        lines++;
    }
    fclose(f);
    CHECK(lines > 400 && bad == 0, "level-to-argument functions equal timm's (%d lines, %d differ)", lines, bad);
}

// ---------------------------------------------------------------- policy strings

static void test_policies(void) {
    FILE *f = fopen("tests/fixtures/randaug_policies.txt", "r");
    CHECK(f != NULL, "fixture tests/fixtures/randaug_policies.txt");
    if (!f) return;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char spec[256], mstd_s[64], *bar1 = strchr(line, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        char *bar3 = bar2 ? strchr(bar2 + 1, '|') : NULL;
        int num_ops, mag, mmax, weighted;
        double prob;
        if (!bar3 || sscanf(line, "%255s", spec) != 1 ||
            sscanf(bar1 + 1, "%d %d %lf %63s %d %d", &num_ops, &mag, &prob, mstd_s, &mmax, &weighted) != 6) {
            CHECK(0, "policy fixture line malformed: %s", line);
            continue;
        }
        RandAugConfig c;
        int rc = randaug_parse(&c, spec, "--aa");
        double mstd = !strcmp(mstd_s, "inf") ? INFINITY : atof(mstd_s);
        int same = rc == VIT_OK && c.enabled && c.num_ops == num_ops && c.magnitude == mag &&
                   fabs(c.prob - prob) < 1e-7 && c.mstd == mstd && c.mmax == mmax && c.weighted == weighted;
        // The op list, in timm's order, and the normalised choice weights.
        char *tok, *save = NULL;
        *bar3 = 0;
        int i = 0;
        for (tok = strtok_r(bar2 + 1, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), i++)
            same &= i < c.n_choices && !strcmp(randaug_op_name(c.choices[i]), tok);
        same &= i == c.n_choices;
        double total = 0;
        for (int k = 0; k < c.n_choices; k++) total += c.weights[k];
        i = 0;
        for (tok = strtok_r(bar3 + 1, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), i++)
            same &= i < c.n_choices && fabs(c.weights[i] / total - atof(tok)) < 1e-12;
        CHECK(same && i == c.n_choices, "policy %s parsed as timm's (%s)", spec, rc ? vit_error() : "ok");
        n++;
    }
    fclose(f);
    CHECK(n >= 8, "policy fixture has %d lines", n);
    RandAugConfig c;
    CHECK(randaug_parse(&c, "", "--aa") == VIT_OK && !c.enabled, "empty policy: off");
    CHECK(randaug_parse(&c, "rand-m9-mstd0.5-inc1", "--aa") == VIT_OK && c.fill[0] == 128 && c.fill[2] == 128 &&
              c.translate_pct == 0.45 && c.resample == RA_RESAMPLE_RANDOM,
          "fill 128, translate 0.45, random resample");
}

static void test_policy_errors(void) {
    static const struct { const char *spec, *why; } bad[] = {
        {"rand-m99x", "'m99x': expected an integer after 'm'"},
        {"rand-m9.5", "expected an integer"},
        {"augmix-m5", "expected a RandAugment policy"},
        {"v0", "expected a RandAugment policy"},
        {"rand-q3", "unknown section 'q3'"},
        {"rand-w0", "unknown section 'w0'"},
        {"rand-m", "section 'm' has no number"},
        {"rand-inc", "has no number"},
        {"rand--m9", "empty section"},
        {"rand-m9-", "empty section"},
        {"rand-p1.5", "p must be in [0, 1]"},
        {"rand-mstd0.5.5", "expected a number after 'mstd'"},
        {"rand-n99", "at most 64 ops"},
        {"rand-t3a", "transform set '3a' is not supported"},
        {"rand-tweights-n16", "without replacement"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        RandAugConfig c;
        int rc = randaug_parse(&c, bad[i].spec, "--aa");
        const char *e = vit_error();
        CHECK(rc == VIT_ERR && strstr(e, "--aa") && strstr(e, bad[i].spec) && strstr(e, bad[i].why) &&
                  !strchr(e, '\n'),
              "--aa %s: one-line error with '%s' (got: %s)", bad[i].spec, bad[i].why, e);
    }
    AugmentConfig a;
    augment_defaults(&a);
    CHECK(augment_set_timm(&a, "", 1.5f, "pixel", 1) == VIT_ERR && strstr(vit_error(), "--reprob 1.5"), "--reprob 1.5");
    CHECK(augment_set_timm(&a, "", -0.1f, "pixel", 1) == VIT_ERR && strstr(vit_error(), "--reprob"), "--reprob -0.1");
    CHECK(augment_set_timm(&a, "", NAN, "pixel", 1) == VIT_ERR, "--reprob nan");
    CHECK(augment_set_timm(&a, "", 0.25f, "noise", 1) == VIT_ERR && strstr(vit_error(), "--remode noise"),
          "--remode noise: %s", vit_error());
    CHECK(augment_set_timm(&a, "", 0.25f, "pixel", 0) == VIT_ERR && strstr(vit_error(), "--recount 0"), "--recount 0");
    CHECK(augment_set_timm(&a, "rand-m9-mstd0.5-inc1", 0.25f, "const", 3) == VIT_OK && a.ra.enabled &&
              a.erase.prob == 0.25f && a.erase.mode == ERASE_CONST && a.erase.max_count == 3,
          "good flags accepted");
}

// ---------------------------------------------------------------- random decisions

static void test_draw_statistics(void) {
    RandAugConfig c;
    randaug_parse(&c, "rand-m9-mstd0.5-inc1", "--aa");
    const int N = 100000;
    long count[RA_OP_COUNT] = {0}, applied = 0, negate = 0, bicubic = 0, at_max = 0, total = 0;
    double msum = 0, m2 = 0;
    RandAugDraw d[RA_MAX_NUM_OPS];
    for (int i = 0; i < N; i++) {
        randaug_draws(&c, 7, 3, (uint64_t)i * 2654435761u, d);
        for (int k = 0; k < c.num_ops; k++, total++) {
            count[d[k].op]++;
            applied += d[k].applied;
            negate += d[k].negate;
            bicubic += d[k].resample == RA_BICUBIC;
            at_max += d[k].magnitude == 10.0;
            msum += d[k].magnitude;
            m2 += d[k].magnitude * d[k].magnitude;
        }
    }
    int in_set = 1, near = 1;
    for (int i = 0; i < RA_OP_COUNT; i++) {
        int member = 0;
        for (int k = 0; k < c.n_choices; k++) member |= (int)c.choices[k] == i;
        if (!member) in_set &= count[i] == 0;
        else near &= fabs((double)count[i] / total - 1.0 / 15) < 0.004;  // ~10 standard errors
    }
    CHECK(in_set && near, "inc1: the 15 increasing ops, each chosen ~1/15 of the time");
    CHECK(fabs((double)applied / total - 0.5) < 0.006, "probability gate 0.5: %.4f", (double)applied / total);
    CHECK(fabs((double)negate / total - 0.5) < 0.006, "sign flip 0.5: %.4f", (double)negate / total);
    CHECK(fabs((double)bicubic / total - 0.5) < 0.006, "bilinear/bicubic 50/50: %.4f", (double)bicubic / total);
    // N(9, 0.5) clamped to [0, 10]: mean 9 - 0.5 (phi(2) - 2 (1 - Phi(2))) = 8.99575, 2.275% at 10.
    double mean = msum / total, sd = sqrt(m2 / total - mean * mean);
    CHECK(fabs(mean - 8.99575) < 0.01 && sd > 0.45 && sd < 0.5, "magnitude noise: mean %.4f, sd %.4f", mean, sd);
    CHECK(fabs((double)at_max / total - 0.02275) < 0.003, "clamped at 10: %.4f", (double)at_max / total);

    // mstd > 100: uniform in [0, m].
    randaug_parse(&c, "rand-m10-mstd101", "--aa");
    msum = 0, total = 0;
    double lo = 1e9, hi = -1;
    for (int i = 0; i < N; i++) {
        randaug_draws(&c, 7, 0, (uint64_t)i, d);
        for (int k = 0; k < c.num_ops; k++, total++) {
            msum += d[k].magnitude;
            lo = d[k].magnitude < lo ? d[k].magnitude : lo;
            hi = d[k].magnitude > hi ? d[k].magnitude : hi;
        }
    }
    CHECK(fabs(msum / total - 5.0) < 0.05 && lo >= 0 && lo < 0.01 && hi <= 10 && hi > 9.99,
          "mstd101: uniform magnitude in [0, 10], mean %.3f", msum / total);
    // No noise: the magnitude is m, clamped to mmax (default 10).
    randaug_parse(&c, "rand-m15-n3", "--aa");
    int fixed = 1;
    for (int i = 0; i < 1000; i++) {
        randaug_draws(&c, 1, 0, (uint64_t)i, d);
        for (int k = 0; k < 3; k++) fixed &= d[k].magnitude == 10.0;
    }
    CHECK(fixed, "m15 without mmax: magnitude clamped to 10");
    randaug_parse(&c, "rand-m15-mmax20", "--aa");
    randaug_draws(&c, 1, 0, 5, d);
    CHECK(d[0].magnitude == 15.0, "m15 with mmax20: 15");

    // Weighted choice without replacement: distinct ops, first slot ~ the weights.
    randaug_parse(&c, "rand-m9-tweights-n3", "--aa");
    long first[RA_MAX_CHOICES] = {0};
    int distinct = 1;
    for (int i = 0; i < N; i++) {
        randaug_draws(&c, 11, 0, (uint64_t)i, d);
        distinct &= d[0].op != d[1].op && d[1].op != d[2].op && d[0].op != d[2].op;
        for (int k = 0; k < c.n_choices; k++) first[k] += c.choices[k] == d[0].op;
    }
    double wsum = 0;
    for (int k = 0; k < c.n_choices; k++) wsum += c.weights[k];
    near = 1;
    for (int k = 0; k < c.n_choices; k++) near &= fabs((double)first[k] / N - c.weights[k] / wsum) < 0.006;
    CHECK(distinct && near, "tweights: three distinct ops per image, first ~ the weights (Rotate %.3f)",
          (double)first[0] / N);

    // Pure function of (seed, epoch, index).
    RandAugDraw e[RA_MAX_NUM_OPS];
    randaug_parse(&c, "rand-m9-mstd0.5-inc1", "--aa");
    randaug_draws(&c, 5, 2, 77, d);
    randaug_draws(&c, 5, 2, 77, e);
    int same = !memcmp(d, e, sizeof(RandAugDraw) * 2);
    int differ = 0;
    for (uint32_t ep = 3; ep < 13; ep++) {
        randaug_draws(&c, 5, ep, 77, e);
        differ += e[0].op != d[0].op || e[0].magnitude != d[0].magnitude;
    }
    CHECK(same && differ >= 8, "draws repeat for the same (seed, epoch, index), change with the epoch");
}

// ---------------------------------------------------------------- random erasing

static void test_erase_boxes(void) {
    EraseConfig e;
    erase_defaults(&e);
    e.prob = 0.25f;
    const int W = 224, H = 160, N = 40000;
    EraseBox b[ERASE_MAX_COUNT];
    long erased = 0, boxes = 0;
    int inside = 1, area_ok = 1, aspect_ok = 1;
    double area_sum = 0, logasp_sum = 0, cx_sum = 0;
    for (int i = 0; i < N; i++) {
        int n = erase_boxes(&e, W, H, 3, 1, (uint64_t)i, b);
        erased += n > 0;
        for (int k = 0; k < n; k++, boxes++) {
            inside &= b[k].x >= 0 && b[k].y >= 0 && b[k].x + b[k].w <= W && b[k].y + b[k].h <= H && b[k].w < W &&
                      b[k].h < H;
            // Rounding each side by up to 1/2 moves the area by up to (w + h) / 2 + 1/4.
            double a = (double)b[k].w * b[k].h, slop = 0.5 * (b[k].w + b[k].h) + 0.25;
            area_ok &= a >= 0.02 * W * H - slop && a <= W * H / 3.0 + slop;
            if (b[k].w > 0 && b[k].h > 0) {
                double la = log((double)b[k].h / b[k].w), s = 0.5 / b[k].w + 0.5 / b[k].h + 1e-9;
                aspect_ok &= la >= log(0.3) - 2 * s && la <= log(1 / 0.3) + 2 * s;
                logasp_sum += la;
            }
            area_sum += a / (W * H);
            cx_sum += b[k].x + b[k].w / 2.0;
        }
    }
    CHECK(fabs((double)erased / N - 0.25) < 0.015, "erase probability 0.25: %.4f", (double)erased / N);
    CHECK(boxes == erased, "recount 1: one box per erased image");
    CHECK(inside && area_ok && aspect_ok, "boxes inside, area in [0.02, 1/3], aspect in [0.3, 3.33]");
    double mean_area = area_sum / boxes;
    // Uniform area in [0.02, 1/3] has mean 0.1767; tall or wide large boxes that do not fit are
    // redrawn, which lowers it a little.
    CHECK(mean_area > 0.15 && mean_area < 0.18, "mean erased area %.4f", mean_area);
    CHECK(fabs(logasp_sum / boxes) < 0.08 && fabs(cx_sum / boxes - W / 2.0) < 3,
          "aspect log-symmetric (%.3f), centres centred (%.1f)", logasp_sum / boxes, cx_sum / boxes);

    // recount 3: 1..3 boxes, uniform; each box's area scaled by 1/count.
    e.prob = 1.0f;
    e.max_count = 3;
    long per[4] = {0};
    int scaled = 1;
    for (int i = 0; i < 30000; i++) {
        int n = erase_boxes(&e, W, H, 9, 0, (uint64_t)i, b);
        per[n < 4 ? n : 0]++;
        for (int k = 0; k < n; k++)
            scaled &= (double)b[k].w * b[k].h <= W * H / 3.0 / n + 0.5 * (b[k].w + b[k].h) + 0.25;
    }
    CHECK(per[0] == 0 && fabs(per[1] / 30000.0 - 1 / 3.0) < 0.02 && fabs(per[2] / 30000.0 - 1 / 3.0) < 0.02 &&
              scaled,
          "recount 3: %ld/%ld/%ld images with 1/2/3 boxes, each at most 1/(3 count)", per[1], per[2], per[3]);
    e.prob = 0.0f;
    CHECK(erase_boxes(&e, W, H, 9, 0, 1, b) == 0, "reprob 0: never");
}

static void test_erase_modes(void) {
    CHECK(erase_byte(0) == 128 && erase_byte(-1) == 0 && erase_byte(1) == 255 && erase_byte(5) == 255 &&
              erase_byte(-7) == 0 && erase_byte(-0.5) == 64,
          "normalised z to bytes: 127.5 (z + 1), rounded, clamped");
    const int W = 64, H = 48, C = 3;
    const size_t n = (size_t)W * H * C;
    uint8_t *px = malloc(n), *orig = malloc(n);
    for (size_t i = 0; i < n; i++) orig[i] = (uint8_t)(i * 7 + 3);
    EraseConfig e;
    erase_defaults(&e);
    e.prob = 1.0f;
    EraseMode modes[3] = {ERASE_CONST, ERASE_RAND, ERASE_PIXEL};
    for (int m = 0; m < 3; m++) {
        e.mode = modes[m];
        int untouched = 1, semantics = 1, checked = 0;
        long clamped = 0, inbox = 0;
        double sum = 0;
        for (int s = 0; s < 300; s++) {
            memcpy(px, orig, n);
            random_erase(&e, px, W, H, C, 4, 0, (uint64_t)s);
            EraseBox b[ERASE_MAX_COUNT];
            int nb = erase_boxes(&e, W, H, 4, 0, (uint64_t)s, b);
            if (nb != 1 || b[0].w == 0 || b[0].h == 0) continue;
            checked++;
            const uint8_t *first = px + ((size_t)b[0].y * W + b[0].x) * C;
            int varies = 0;
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    const uint8_t *p = px + ((size_t)y * W + x) * C, *o = orig + ((size_t)y * W + x) * C;
                    int in = x >= b[0].x && x < b[0].x + b[0].w && y >= b[0].y && y < b[0].y + b[0].h;
                    if (!in) {
                        untouched &= !memcmp(p, o, C);
                        continue;
                    }
                    for (int c = 0; c < C; c++) {
                        inbox++;
                        sum += p[c];
                        clamped += p[c] == 0 || p[c] == 255;
                        if (modes[m] == ERASE_CONST) semantics &= p[c] == 128;
                        if (modes[m] == ERASE_RAND) semantics &= p[c] == first[c];
                        varies |= p[c] != first[c];
                    }
                }
            if (modes[m] == ERASE_PIXEL && b[0].w * b[0].h > 4) semantics &= varies;
        }
        const char *name = modes[m] == ERASE_CONST ? "const" : modes[m] == ERASE_RAND ? "rand" : "pixel";
        CHECK(checked > 250 && untouched && semantics, "%s: only the box changes, filled as the mode says", name);
        if (modes[m] != ERASE_CONST) {
            // N(0, 1) as bytes: mean 127.5, |z| > ~1 clamped (32%).
            double mean = sum / inbox, frac = (double)clamped / inbox;
            double tol = modes[m] == ERASE_PIXEL ? 1.0 : 6.0, ftol = modes[m] == ERASE_PIXEL ? 0.01 : 0.05;
            CHECK(fabs(mean - 127.5) < tol && fabs(frac - 0.319) < ftol, "%s: byte mean %.2f, clamped %.3f", name,
                  mean, frac);
        }
    }
    free(px), free(orig);
}

// ---------------------------------------------------------------- in augment_train and the loader

static Image make_image(int w, int h) {
    Image img = {malloc((size_t)w * h * 3), w, h};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = img.pixels + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(20 + 200 * x / w);
            p[1] = (uint8_t)(30 + 190 * y / h);
            p[2] = (uint8_t)(128 + 100 * sin(x * 0.2 + y * 0.13));
        }
    return img;
}

static void test_in_augment_train(void) {
    Image img = make_image(90, 70);
    const int S = 48;
    AugmentConfig plain, ra;
    augment_defaults(&plain);
    augment_defaults(&ra);
    augment_set_timm(&ra, "rand-m9-mstd0.5-inc1", 0.0f, "pixel", 1);
    uint8_t *a = malloc(S * S * 3), *b = malloc(S * S * 3), *l = malloc(S * S);
    int same = 1, luma = 1, changed = 0;
    for (uint64_t i = 0; i < 40; i++) {
        // RandAugment runs on the recipe's finished crop: the recipe's bytes, then the ops.
        augment_train(&img, S, 3, &plain, 1, 2, i, a);
        randaug_apply(&ra.ra, a, S, S, 3, 1, 2, i);
        augment_train(&img, S, 3, &ra, 1, 2, i, b);
        same &= !memcmp(a, b, S * S * 3);
        augment_train(&img, S, 3, &plain, 1, 2, i, a);
        changed += memcmp(a, b, S * S * 3) != 0;
        // A 1-channel model gets the luma of the RandAugmented RGB.
        augment_train(&img, S, 1, &ra, 1, 2, i, l);
        for (int k = 0; k < S * S; k++) {
            const uint8_t *p = b + 3 * k;
            float v = 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2] + 0.5f;
            luma &= l[k] == (uint8_t)(v < 255.0f ? v : 255.0f);
        }
    }
    CHECK(same, "augment_train with --aa = the recipe's crop, then RandAugment on its bytes");
    CHECK(changed > 20, "RandAugment changes most crops (%d of 40)", changed);
    CHECK(luma, "1 channel: the luma of the RandAugmented RGB crop");
    // Erasing runs last: with const mode at probability 1 the box is 128 in the output.
    AugmentConfig er;
    augment_defaults(&er);
    augment_set_timm(&er, "", 1.0f, "const", 1);
    augment_train(&img, S, 3, &plain, 1, 2, 5, a);
    augment_train(&img, S, 3, &er, 1, 2, 5, b);
    EraseBox bx[ERASE_MAX_COUNT];
    int nb = erase_boxes(&er.erase, S, S, 1, 2, 5, bx);
    random_erase(&er.erase, a, S, S, 3, 1, 2, 5);
    CHECK(nb == 1 && !memcmp(a, b, S * S * 3), "random erasing after the crop, on the output bytes");
    // IDX images (gray, no crop): RandAugment as PIL's mode L, then erasing.
    uint8_t g[28 * 28], h[28 * 28];
    for (int k = 0; k < 28 * 28; k++) g[k] = h[k] = (uint8_t)(k * 3);
    augment_extra(g, 28, 1, &ra, 1, 0, 9);
    randaug_apply(&ra.ra, h, 28, 28, 1, 1, 0, 9);
    CHECK(!memcmp(g, h, sizeof g), "augment_extra on a gray image = RandAugment in mode L");
    free(a), free(b), free(l), free(img.pixels);
}

static void write_png(const char *path, int w, int h, int seed) {
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = (png_uint_32)w;
    im.height = (png_uint_32)h;
    im.format = PNG_FORMAT_RGB;
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++) px[i] = (uint8_t)((i * 37 + seed * 91) ^ (i / (3 * w)) * 5);
    png_image_write_to_file(&im, path, 0, px, 0, NULL);
    free(px);
}

static uint8_t *run_loader(const Dataset *d, int workers, const int *order, int n) {
    size_t bytes = (size_t)d->size * d->size * d->channels;
    uint8_t *all = calloc((size_t)n, bytes);
    Loader *l = loader_create(d, 4, workers, 3);
    long at = 0;
    if (l && loader_begin(l, order, n, 2) == VIT_OK) {
        const uint8_t *img;
        const int *lab;
        int got;
        while (at < n && loader_next(l, &img, &lab, &got) == VIT_OK) {
            memcpy(all + at * bytes, img, (size_t)got * bytes);
            at += got;
        }
    }
    loader_destroy(l);
    return all;
}

static void test_threads(void) {
    char root[] = "/tmp/vitc-randaug-XXXXXX", p[600];
    if (!mkdtemp(root)) return;
    for (int split = 0; split < 2; split++) {
        snprintf(p, sizeof p, "%s/%s", root, split ? "val" : "train");
        mkdir(p, 0777);
        snprintf(p, sizeof p, "%s/%s/c", root, split ? "val" : "train");
        mkdir(p, 0777);
        for (int i = 0; i < 10; i++) {
            snprintf(p, sizeof p, "%s/%s/c/%d.png", root, split ? "val" : "train", i);
            write_png(p, 40 + i, 36, i);
        }
    }
    Dataset tr, va;
    int rc = dataset_open_folder(&tr, &va, root);
    CHECK(rc == VIT_OK && tr.count == 10, "folder of 10 PNGs");
    if (rc == VIT_OK) {
        AugmentConfig aug;
        augment_defaults(&aug);
        augment_set_timm(&aug, "rand-m9-mstd0.5-inc1-n3-p0.9", 0.5f, "pixel", 2);
        dataset_set_output(&tr, 24, 3, 1, &aug);
        tr.seed = 17;
        int order[10] = {3, 9, 0, 4, 7, 1, 8, 2, 6, 5};
        uint8_t *one = run_loader(&tr, 1, order, 10), *three = run_loader(&tr, 3, order, 10);
        augment_defaults(&aug);
        dataset_set_output(&tr, 24, 3, 1, &aug);
        uint8_t *plain = run_loader(&tr, 3, order, 10);
        size_t bytes = 10 * 24 * 24 * 3;
        CHECK(!memcmp(one, three, bytes), "--aa and --reprob: identical batches for 1 and 3 loader threads");
        CHECK(memcmp(one, plain, bytes) != 0, "and different from the recipe's alone");
        free(one), free(three), free(plain);
    }
    dataset_free(&tr);
    dataset_free(&va);
    testdir_remove(root);
}

// ---------------------------------------------------------------- speed (a print)

static void speed(void) {
    if (getenv("VIT_SKIP_SPEED")) return;
    const int S = 224;
    Image img = make_image(S, S);
    uint8_t *px = malloc(S * S * 3), *scratch = malloc(2 * (S * S * 3 + 16));
    const uint8_t fill[3] = {128, 128, 128};
    printf("speed at %dx%d RGB, ms per op:", S, S);
    for (int op = 0; op < RA_OP_COUNT; op++) {
        for (int rs = RA_BILINEAR; rs <= RA_BICUBIC; rs++) {
            int geo = op == RA_ROTATE || op >= RA_SHEAR_X;
            if (!geo && rs == RA_BICUBIC) continue;
            double arg = randaug_op_arg((RandAugOp)op, 9, 1, 0.45);
            double t0 = clock_seconds();
            for (int r = 0; r < 20; r++) {
                memcpy(px, img.pixels, (size_t)S * S * 3);
                randaug_apply_op((RandAugOp)op, arg, rs, fill, px, S, S, 3, scratch);
            }
            printf(" %s%s %.3f", randaug_op_name((RandAugOp)op), geo ? (rs == RA_BICUBIC ? "/bic" : "/bil") : "",
                   (clock_seconds() - t0) / 20 * 1e3);
        }
    }
    EraseConfig e;
    erase_defaults(&e);
    e.prob = 1.0f;
    double t0 = clock_seconds();
    for (int r = 0; r < 200; r++) random_erase(&e, px, S, S, 3, 1, 0, (uint64_t)r);
    printf("; erase pixel (p 1) %.3f\n", (clock_seconds() - t0) / 200 * 1e3);
    free(px), free(scratch), free(img.pixels);
}

int main(void) {
    test_ops_fixture();
    test_posterize_zero();
    test_levels();
    test_policies();
    test_policy_errors();
    test_draw_statistics();
    test_erase_boxes();
    test_erase_modes();
    test_in_augment_train();
    test_threads();
    speed();
    return check_report("test_randaugment");
}
