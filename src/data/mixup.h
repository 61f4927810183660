// Mixup and CutMix of training batches, with timm's semantics (timm/data/mixup.py): the
// host-side draws (mixing weight, CutMix box, mixup or CutMix) of one micro-step, as a pure
// function of (seed, step). The images and targets are mixed on the device by the backend ops
// mix_images and xent_mix_* (src/backend/backend.h), which read the plan made here.
//
// Every mode pairs sample b with sample B-1-b (timm's x.flip(0)):
//  - batch: one draw per batch, shared by every sample;
//  - pair:  one draw per pair (b, B-1-b), shared by both;
//  - elem:  one draw per sample.
// A draw: with probability `prob` the sample (batch, pair) is mixed; then CutMix with
// probability `switch_prob` when both alphas are on (else whichever is on), and a weight
// lam ~ Beta(alpha, alpha) of that kind. Mixup: image = lam x + (1 - lam) x_partner. CutMix:
// the partner's pixels inside a box of area ~(1 - lam) (rand_bbox, clipped to the image, or
// rand_bbox_minmax with --cutmix_minmax), and lam corrected to 1 - box area / image area.
// Targets: lam * smooth(y) + (1 - lam) * smooth(y_partner), smooth = timm's one_hot with
// off = smoothing / K, on = 1 - smoothing + off.
//
// Rounding as timm's: batch mode keeps lam in double (a Python float), pair and elem round
// it to fp32 first (timm's float32 lam arrays), and rand_bbox's side then runs in fp32 too.
// The weights handed to the device are fp32(lam) and fp32(1 - lam), as torch multiplies a
// float32 tensor by a Python scalar.
#pragma once
#include <stdint.h>

typedef enum { MIX_BATCH = 0, MIX_PAIR = 1, MIX_ELEM = 2 } MixMode;

typedef struct {
    float mixup_alpha;     // --mixup: Beta(a, a) of mixup weights; 0 = no mixup
    float cutmix_alpha;    // --cutmix: Beta(a, a) of CutMix weights; 0 = no CutMix
    double minmax[2];      // --cutmix_minmax: box sides as fractions of the image; minmax[1] > 0 = on
                           // (then CutMix is on with alpha 1, as timm forces)
    float prob;            // --mixup_prob: probability that a batch/pair/sample is mixed
    float switch_prob;     // --mixup_switch_prob: CutMix instead of mixup when both are on
    MixMode mode;          // --mixup_mode
} MixupConfig;

// One slot's random draws (a batch, a pair or a sample): what timm takes from np.random.
typedef struct {
    int apply;             // rand() < prob
    int cutmix;            // CutMix (rand() < switch_prob when both are on)
    double lam;            // the Beta draw of the chosen kind
    int cy, cx;            // rand_bbox: the box centre, in [0, H) x [0, W)
    int cut_h, cut_w;      // rand_bbox_minmax: the box sides ...
    int yl, xl;            // ... and its top-left corner
} MixDraw;

// What one sample gets: the device ops' per-sample arguments.
typedef struct {
    double lam;            // the weight of the sample's own target (after CutMix's correction)
    float img_w[2];        // image outside the box: img_w[0] * own + img_w[1] * partner
    float tgt_w[2];        // target: tgt_w[0] * smooth(own label) + tgt_w[1] * smooth(partner's)
    int box[4];            // yl, yh, xl, xh: pixels [yl, yh) x [xl, xh) come from the partner (empty: none)
    int mixed;             // the image changes (lam != 1)
} MixSample;

// Mixing is on: a mixup or CutMix alpha (or a minmax) is set.
int mixup_enabled(const MixupConfig *c);
// "batch" | "pair" | "elem". VIT_ERR with a message naming --mixup_mode otherwise.
int mixup_parse_mode(const char *text, MixMode *mode);
// "lo,hi" (0 < lo < hi <= 1) into minmax; "" leaves it off. VIT_ERR naming --cutmix_minmax.
int mixup_parse_minmax(const char *text, double minmax[2]);
// Ranges of every field, and what timm asserts: an even batch of B images (the local batch of
// a rank) when mixing is on, and a minmax box whose smallest side is below its largest for an
// S x S image (S 0: not checked yet). The message names the flag.
int mixup_validate(const MixupConfig *c, int B, int S);

// Slots drawn per batch of B: 1 (batch), B/2 (pair), B (elem).
int mixup_slots(const MixupConfig *c, int B);
// The draws of step `step` under `seed` for `slots` slots of H x W images: Philox streams
// keyed by (seed, step, slot), independent of the order of the calls.
void mixup_draw(const MixupConfig *c, uint64_t seed, uint32_t step, int slots, int H, int W, MixDraw *d);
// timm's logic on given draws (d: mixup_slots of them) for B samples: fills s[0..B) and
// returns how many images change (0: the batch goes in as it is; the targets still mix).
int mixup_plan(const MixupConfig *c, const MixDraw *d, int B, int H, int W, MixSample *s);

// timm's rand_bbox for given centre draws: lam in double (single = 0) or fp32 (single = 1,
// the pair/elem path); box = yl, yh, xl, xh.
void mixup_rand_bbox(int H, int W, double lam, int single, int cy, int cx, int box[4]);
// The box's corrected lam: 1 - area / (H W).
double mixup_box_lam(int H, int W, const int box[4]);
// Soft targets of B samples over K classes into t (B x K), as the device computes them:
// t = fp32(fp32(tgt_w[0] * a) + fp32(tgt_w[1] * b)), a and b the smoothed one-hots of the
// sample's label and of its partner's (sample B-1-b).
void mixup_targets(const MixSample *s, const int *labels, int B, int K, float smoothing, float *t);
// fp32 values of timm's one_hot for a smoothing: off = s / K, on = 1 - s + off (in double).
void mixup_on_off(float smoothing, int K, float *on, float *off);

// Beta(a, a) number `index` of stream `stream` under `seed`: G1 / (G1 + G2) with two
// Gamma(a, 1) draws (Marsaglia and Tsang's squeeze method; for a < 1, Gamma(a + 1) U^(1/a),
// in logarithms so that tiny alphas do not underflow). Each Gamma draw tries up to 64
// candidates from its own Philox counters (a miss is below 1e-80).
double mixup_beta(uint64_t seed, uint32_t stream, uint64_t index, double a);
