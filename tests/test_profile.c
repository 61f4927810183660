// The step profiler and the profiling backend: wrapped ops give the CPU backend's results bit
// for bit, spans are recorded only while active and keyed by phase, the trace is valid JSON
// with properly nested spans, and failures to write are reported. The roofline columns
// computed from spans of known duration against given ceilings; the ceilings measured on the
// CPU backend.
#include <string.h>
#include "backend/backend.h"
#include "prof/profiled_backend.h"
#include "check.h"
#include "io/json.h"
#include "testdir.h"
#include "prof/profile.h"
#include "util/rng.h"
#include "prof/roofline.h"
#include "util/status.h"

static Backend *cpu;

static float *randn(size_t n, uint32_t stream) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_normal(7, stream, i);
    return x;
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

// Shapes of the ops run under the profiler.
enum { GM = 9, GN = 7, GK = 5, ROWS = 6, C = 16, AB = 2, AT = 5, AH = 2, AHD = 4 };
#define AN ((size_t)AB * AT * AH * AHD)

typedef struct {
    float *A, *B, *bias, *x, *w, *b, *q, *k, *v, *dout;
} Inputs;

typedef struct {
    float *C1, *C2, *C3, *Z, *ln, *mean, *rstd, *att, *state, *scratch, *dq, *dk, *dv;
} Outputs;

static Outputs outputs_new(void) {
    Outputs o;
    o.C1 = malloc(GM * GN * sizeof(float));
    o.C2 = malloc(GM * GN * sizeof(float));
    o.C3 = malloc(GK * GN * sizeof(float));
    o.Z = malloc(64 * sizeof(float));
    o.ln = malloc(ROWS * C * sizeof(float));
    o.mean = malloc(ROWS * sizeof(float));
    o.rstd = malloc(ROWS * sizeof(float));
    o.att = malloc(AN * sizeof(float));
    o.state = malloc(cpu->attention_state_floats(cpu, AB, AT, AH, AHD) * sizeof(float));
    o.scratch = malloc(cpu->attention_scratch_floats(cpu, AB, AT, AH, AHD) * sizeof(float));
    o.dq = malloc(AN * sizeof(float));
    o.dk = malloc(AN * sizeof(float));
    o.dv = malloc(AN * sizeof(float));
    return o;
}

static void outputs_free(Outputs *o) {
    free(o->C1), free(o->C2), free(o->C3), free(o->Z), free(o->ln), free(o->mean), free(o->rstd), free(o->att), free(o->state);
    free(o->scratch), free(o->dq), free(o->dk), free(o->dv);
}

// One "step" through backend be: forward (2 gemms, a layernorm, attention), backward
// (attention, 1 gemm), and a zero directly under the step. p may be NULL (no phases).
static void run_step(Backend *be, Profiler *p, const Inputs *in, Outputs *o) {
    prof_begin(p, "step 1", "step");
    prof_begin(p, "forward", NULL);
    CHECK(be->gemm(be, 1, GM, GN, GK, in->A, 0, in->B, 0, o->C1, in->bias, 1.0f, 0) == 0, "gemm 1");
    memcpy(o->C2, o->C1, GM * GN * sizeof(float));
    CHECK(be->gemm(be, 1, GM, GN, GK, in->A, 0, in->B, 0, o->C2, NULL, 0.5f, 1) == 0, "gemm 2");
    be->layernorm_forward(be, o->ln, o->mean, o->rstd, in->x, in->w, in->b, ROWS, C, 1e-6f);
    CHECK(be->attention_forward(be, o->att, o->state, o->scratch, in->q, in->k, in->v, AB, AT, AH, AHD) == 0,
          "attention forward");
    prof_end(p);
    prof_begin(p, "backward", NULL);
    CHECK(be->attention_backward(be, o->dq, o->dk, o->dv, in->dout, o->att, o->state, o->scratch, in->q, in->k, in->v, AB, AT,
                                 AH, AHD) == 0,
          "attention backward");
    CHECK(be->gemm(be, 1, GK, GN, GM, in->A, 1, o->C1, 0, o->C3, NULL, 1.0f, 0) == 0, "gemm 3");
    prof_end(p);
    be->zero(be, o->Z, 64 * sizeof(float));
    prof_end(p);
}

// ---- reading the trace back with the project's JSON cursor ----------------------------------

typedef struct {
    char name[32], ph[4];
    double ts, dur, flops;
    int pid, tid;
} Ev;

static double number(JsonCursor *c) {
    json_skip_ws(c);
    size_t at = c->i;
    if (json_skip_value(c) != VIT_OK) return NAN;
    char *end;
    double v = strtod((const char *)c->s + at, &end);
    return end == (const char *)c->s + c->i ? v : NAN;
}

// flops from an op's args object (0 when absent), the rest skipped.
static int parse_args(JsonCursor *c, Ev *e) {
    if (json_expect(c, '{', "args") || json_accept(c, '}')) return VIT_OK;
    do {
        char *key;
        if (json_string(c, &key) || json_expect(c, ':', "in args")) return free(key), VIT_ERR;
        if (!strcmp(key, "flops")) e->flops = number(c);
        else if (json_skip_value(c)) return free(key), VIT_ERR;
        free(key);
    } while (json_accept(c, ','));
    return json_expect(c, '}', "after args");
}

static int parse_event(JsonCursor *c, Ev *e) {
    memset(e, 0, sizeof *e);
    e->pid = e->tid = -1;
    if (json_expect(c, '{', "event")) return VIT_ERR;
    do {
        char *key, *val = NULL;
        if (json_string(c, &key) || json_expect(c, ':', "in an event")) return free(key), VIT_ERR;
        int rc = VIT_OK;
        if (!strcmp(key, "name")) {
            if (!(rc = json_string(c, &val))) snprintf(e->name, sizeof e->name, "%s", val);
        } else if (!strcmp(key, "ph")) {
            if (!(rc = json_string(c, &val))) snprintf(e->ph, sizeof e->ph, "%s", val);
        } else if (!strcmp(key, "ts")) e->ts = number(c);
        else if (!strcmp(key, "dur")) e->dur = number(c);
        else if (!strcmp(key, "pid") || !strcmp(key, "tid")) {
            double v = number(c);
            *(key[0] == 'p' ? &e->pid : &e->tid) = v >= 0 && v < 1e6 ? (int)v : -2;
        }
        else if (!strcmp(key, "args")) rc = parse_args(c, e);
        else rc = json_skip_value(c);
        free(key), free(val);
        if (rc) return VIT_ERR;
    } while (json_accept(c, ','));
    return json_expect(c, '}', "after an event");
}

static int parse_trace(const char *buf, size_t len, const char *path, Ev *ev, int max, int *n) {
    JsonCursor c;
    if (json_init(&c, buf, len, path, "trace")) return VIT_ERR;
    // A first pass validates everything, a second reads the fields.
    if (json_skip_value(&c)) return VIT_ERR;
    json_skip_ws(&c);
    if (c.i != c.n) return VIT_ERR;
    c.i = 0;
    int seen_events = 0, seen_unit = 0;
    if (json_expect(&c, '{', "at the start")) return VIT_ERR;
    do {
        char *key;
        if (json_string(&c, &key) || json_expect(&c, ':', "after a key")) return free(key), VIT_ERR;
        int rc = VIT_OK;
        if (!strcmp(key, "traceEvents")) {
            seen_events = 1;
            rc = json_expect(&c, '[', "traceEvents");
            if (!rc && !json_accept(&c, ']')) {
                do {
                    Ev tmp;
                    rc = parse_event(&c, *n < max ? &ev[*n] : &tmp);
                    (*n)++;
                } while (!rc && json_accept(&c, ','));
                if (!rc) rc = json_expect(&c, ']', "after the events");
            }
        } else if (!strcmp(key, "displayTimeUnit")) {
            char *v = NULL;
            rc = json_string(&c, &v);
            seen_unit = v && !strcmp(v, "ms");
            free(v);
        } else {
            rc = json_skip_value(&c);
        }
        free(key);
        if (rc) return VIT_ERR;
    } while (json_accept(&c, ','));
    return !json_expect(&c, '}', "at the end") && seen_events && seen_unit ? VIT_OK : VIT_ERR;
}

// Parses the whole file strictly; *n events, the first `max` into ev. Returns VIT_OK when it
// is one valid JSON object with a traceEvents array and displayTimeUnit "ms", nothing after it.
static int read_trace(const char *path, Ev *ev, int max, int *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return VIT_ERR;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
    size_t len = buf ? fread(buf, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!buf) return VIT_ERR;
    buf[len] = 0;  // strtod stops at the JSON's own delimiters, this only bounds it
    int rc = parse_trace(buf, len, path, ev, max, n);
    free(buf);
    return rc;
}
static const Ev *find(const Ev *ev, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(ev[i].ph, "X") && !strcmp(ev[i].name, name)) return &ev[i];
    return NULL;
}

static int inside(const Ev *child, const Ev *parent) {
    return child->ts >= parent->ts && child->ts + child->dur <= parent->ts + parent->dur;
}

// ---- tests ------------------------------------------------------------------------------------

static void test_wrapped(const char *dir) {
    Inputs in = {randn(GM * GK, 1), randn(GK * GN, 2), randn(GN, 3), randn(ROWS * C, 4), randn(C, 5), randn(C, 6),
                 randn(AN, 7),      randn(AN, 8),      randn(AN, 9), randn(AN, 10)};
    Outputs ref = outputs_new(), got = outputs_new();
    run_step(cpu, NULL, &in, &ref);

    Profiler *p = profiler_create(3);
    Backend *be = backend_profiled(cpu, p, 0);
    CHECK(p && be && !strcmp(be->name, cpu->name), "profiler and wrapper created");
    CHECK(!profiler_active(p), "a new profiler is inactive");

    // Inactive: results through the wrapper, nothing recorded.
    run_step(be, p, &in, &got);
    CHECK(profiler_span_count(p) == 0, "inactive: %ld spans recorded", profiler_span_count(p));

    profiler_set_active(p, 1);
    run_step(be, p, &in, &got);
    profiler_set_active(p, 0);
    CHECK(same(got.C1, ref.C1, GM * GN) && same(got.C2, ref.C2, GM * GN) && same(got.C3, ref.C3, GK * GN),
          "gemm results bit for bit");
    CHECK(same(got.ln, ref.ln, ROWS * C) && same(got.mean, ref.mean, ROWS) && same(got.rstd, ref.rstd, ROWS),
          "layernorm results bit for bit");
    CHECK(same(got.att, ref.att, AN), "attention forward bit for bit");
    CHECK(same(got.dq, ref.dq, AN) && same(got.dk, ref.dk, AN) && same(got.dv, ref.dv, AN),
          "attention backward bit for bit");
    // 3 phases + 3 gemm + layernorm + 2 attention + zero
    long spans = profiler_span_count(p);
    CHECK(spans == 10, "active: %ld spans, want 10", spans);
    run_step(be, p, &in, &got);
    CHECK(profiler_span_count(p) == spans, "switched off again: nothing more recorded");

    ProfStat gf = profiler_stat(p, "gemm", "forward"), gb = profiler_stat(p, "gemm", "backward");
    double mnk = 2.0 * GM * GN * GK;
    CHECK(gf.calls == 2 && gf.flops == 2 * mnk, "gemm/forward: %ld calls, %g flops", gf.calls, gf.flops);
    // gemm 1: A, B, C and the bias; gemm 2: A, B, C read and written
    double bytes = 4.0 * (GM * GK + GK * GN + GM * GN + GN) + 4.0 * (GM * GK + GK * GN + 2 * GM * GN);
    CHECK(gf.bytes == bytes, "gemm/forward bytes %g, want %g", gf.bytes, bytes);
    CHECK(gb.calls == 1 && gb.flops == mnk, "gemm/backward: %ld calls, %g flops", gb.calls, gb.flops);
    CHECK(gf.total_ms > 0 && gb.total_ms > 0, "gemm times recorded");
    ProfStat af = profiler_stat(p, "attention_forward", "forward"), ab = profiler_stat(p, "attention_backward", "backward");
    double tt = (double)AB * AH * AT * AT * AHD;
    CHECK(af.calls == 1 && af.flops == 4 * tt, "attention_forward: %ld calls, %g flops", af.calls, af.flops);
    CHECK(ab.calls == 1 && ab.flops == 8 * tt, "attention_backward: %ld calls, %g flops", ab.calls, ab.flops);
    ProfStat ln = profiler_stat(p, "layernorm_forward", "forward");
    CHECK(ln.calls == 1 && ln.flops == 0 && ln.bytes == 4.0 * (2 * ROWS * C + 2 * C + 2 * ROWS),
          "layernorm_forward: %ld calls, %g flops, %g bytes", ln.calls, ln.flops, ln.bytes);
    CHECK(profiler_stat(p, "layernorm_forward", "backward").calls == 0, "no layernorm row under backward");
    // The zero ran directly under the step: step spans are not phases of the statistics.
    CHECK(profiler_stat(p, "zero", NULL).calls == 1 && profiler_stat(p, "zero", "").calls == 1 &&
              profiler_stat(p, "zero", "step 1").calls == 0,
          "an op outside any phase gets phase '-'");

    // The table: rows per (op, phase), the roofline columns, the row limit.
    profiler_set_roofline(p, &(Roofline){100, 10, 0});
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    profiler_print_table(p, mem, 0);
    fclose(mem);
    CHECK(text && strstr(text, "GFLOP/s") && strstr(text, "% roofline") && strstr(text, "attention_backward") &&
              strstr(text, "backward") && strstr(text, "rank 3"),
          "table:\n%s", text ? text : "");
    int gemm_rows = 0;
    for (const char *s = text; s && (s = strstr(s, "\ngemm ")); s++) gemm_rows++;
    CHECK(gemm_rows == 2, "2 gemm rows (forward, backward), got %d", gemm_rows);
    free(text);
    text = NULL;
    profiler_print_table(p, stdout, 0);
    profiler_set_roofline(p, NULL);
    mem = open_memstream(&text, &len);
    profiler_print_table(p, mem, 2);
    fclose(mem);
    CHECK(text && strstr(text, "(4 more rows") && strstr(text, "flop/B") && !strstr(text, "roofline"),
          "top 2 of 6 rows, no ceilings:\n%s", text ? text : "");
    free(text);

    // The trace: valid JSON, one X event per span, children inside their parents.
    char path[512];
    snprintf(path, sizeof path, "%s/trace.json", dir);
    CHECK(profiler_write_trace(p, path) == VIT_OK, "trace written: %s", vit_error());
    CHECK(testdir_count(dir, ".tmp") == 0, "no temporary file left");
    static Ev ev[64];
    int n;
    CHECK(read_trace(path, ev, 64, &n) == VIT_OK, "trace is valid JSON: %s", vit_error());
    if (n > 64) n = 64;
    int xs = 0, meta = 0, pids = 1;
    for (int i = 0; i < n; i++) {
        xs += !strcmp(ev[i].ph, "X");
        meta += !strcmp(ev[i].ph, "M") && !strcmp(ev[i].name, "process_name");
        pids &= ev[i].pid == 3 && ev[i].tid == 0;
    }
    CHECK(xs == 10 && meta == 1 && pids, "%d X events (want 10), %d process_name, pid 3 everywhere: %d", xs, meta,
          pids);
    int laminar = 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            if (i == j || strcmp(ev[i].ph, "X") || strcmp(ev[j].ph, "X")) continue;
            const Ev *a = &ev[i], *b = &ev[j];
            int disjoint = a->ts + a->dur <= b->ts || b->ts + b->dur <= a->ts;
            laminar &= disjoint || inside(a, b) || inside(b, a);
        }
    CHECK(laminar, "spans nest or are disjoint");
    const Ev *step = find(ev, n, "step 1"), *fw = find(ev, n, "forward"), *bw = find(ev, n, "backward"),
             *att = find(ev, n, "attention_forward"), *attb = find(ev, n, "attention_backward"),
             *z = find(ev, n, "zero");
    CHECK(step && fw && bw && att && attb && z, "named events present");
    if (step && fw && bw && att && attb && z) {
        CHECK(inside(fw, step) && inside(bw, step) && inside(z, step) && fw->ts + fw->dur <= bw->ts,
              "phases inside the step, in order");
        CHECK(inside(att, fw) && inside(attb, bw) && !inside(z, fw) && !inside(z, bw), "ops inside their phase");
        CHECK(att->flops == 4 * tt && attb->flops == 8 * tt, "flops in the args");
    }
    int gemms_in_fw = 0;
    for (int i = 0; i < n; i++) gemms_in_fw += fw && !strcmp(ev[i].name, "gemm") && inside(&ev[i], fw);
    CHECK(gemms_in_fw == 2, "2 gemm events inside forward, got %d", gemms_in_fw);

    // Unwritable: a folder that does not exist.
    snprintf(path, sizeof path, "%s/missing/trace.json", dir);
    CHECK(profiler_write_trace(p, path) == VIT_ERR && strstr(vit_error(), path), "unwritable path: %s", vit_error());

    be->destroy(be);  // the CPU backend stays usable
    CHECK(cpu->gemm(cpu, 1, GM, GN, GK, in.A, 0, in.B, 0, ref.C1, NULL, 1.0f, 0) == 0, "inner survives the wrapper");
    profiler_destroy(p);
    outputs_free(&ref), outputs_free(&got);
    free(in.A), free(in.B), free(in.bias), free(in.x), free(in.w), free(in.b);
    free(in.q), free(in.k), free(in.v), free(in.dout);
}

// A trace larger than the writer's 1 MiB buffer, written in pieces, is still one valid document.
static void test_large_trace(const char *dir) {
    Profiler *p = profiler_create(0);
    Backend *be = backend_profiled(cpu, p, 0);
    float x = 1;
    profiler_set_active(p, 1);
    for (int s = 0; s < 100; s++) {
        char name[32];
        snprintf(name, sizeof name, "step %d", s);
        prof_begin(p, name, "step");
        prof_begin(p, "update", NULL);
        for (int i = 0; i < 100; i++) be->scale(be, &x, 1, 1.0f);
        prof_end(p);
        prof_end(p);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/large.json", dir);
    CHECK(profiler_write_trace(p, path) == VIT_OK, "large trace written: %s", vit_error());
    struct stat sb;
    int n = 0;
    CHECK(stat(path, &sb) == 0 && sb.st_size > (1 << 20), "the trace exceeds 1 MiB");
    CHECK(read_trace(path, NULL, 0, &n) == VIT_OK && n == 3 + 100 * 102, "large trace valid, %d events", n);
    CHECK(profiler_stat(p, "scale", "update").calls == 10000, "10000 scale calls under update");
    be->destroy(be);
    profiler_destroy(p);
}

// sync: the inner backend is synchronized before every end timestamp, and only while active.
static int syncs;
static void count_sync(Backend *be) { syncs++; }

static void test_sync(void) {
    Backend mock = *cpu;  // the same ops and impl, a synchronize that counts
    mock.synchronize = count_sync;
    Profiler *p = profiler_create(0);
    Backend *be = backend_profiled(&mock, p, 1);
    float *x = randn(100, 11), *y = randn(100, 12);
    be->add(be, y, x, y, 100);
    CHECK(syncs == 0, "inactive: no synchronize (%d)", syncs);
    profiler_set_active(p, 1);
    be->add(be, y, x, y, 100);
    be->scale(be, y, 100, 2.0f);
    double ss = be->sum_squares(be, x, 100);
    CHECK(syncs == 3 && ss > 0, "one synchronize per op: %d", syncs);
    be->synchronize(be);
    CHECK(syncs == 4 && profiler_span_count(p) == 3, "synchronize forwarded, not recorded");
    profiler_set_active(p, 0);
    be->destroy(be);
    profiler_destroy(p);
    free(x), free(y);
    CHECK(backend_profiled(NULL, NULL, 0) == NULL && *vit_error(), "bad arguments refused");
}

// Phases: unbalanced and over-deep nesting stays consistent; NULL is a no-op.
static void test_phases(void) {
    profiler_destroy(NULL);
    prof_begin(NULL, "x", "y");
    prof_end(NULL);
    profiler_set_active(NULL, 1);
    CHECK(!profiler_active(NULL) && profiler_span_count(NULL) == 0, "NULL profiler");

    Profiler *p = profiler_create(1);
    Backend *be = backend_profiled(cpu, p, 0);
    float *x = randn(64, 13);
    prof_begin(p, "forward", NULL);  // begun while inactive: not recorded, but popped by its end
    profiler_set_active(p, 1);
    prof_begin(p, "backward", NULL);
    be->scale(be, x, 64, 1.0f);
    prof_end(p);
    be->scale(be, x, 64, 1.0f);
    prof_end(p);
    CHECK(profiler_span_count(p) == 3, "spans: %ld", profiler_span_count(p));
    CHECK(profiler_stat(p, "scale", "backward").calls == 1 && profiler_stat(p, "scale", NULL).calls == 1,
          "ops keyed by the recorded phases");
    long before = profiler_span_count(p);
    for (int i = 0; i < 70; i++) prof_begin(p, "deep", NULL);
    be->scale(be, x, 64, 1.0f);
    for (int i = 0; i < 70; i++) prof_end(p);
    prof_end(p);  // one too many: ignored
    be->scale(be, x, 64, 1.0f);
    CHECK(profiler_span_count(p) == before + 64 + 2 && profiler_stat(p, "scale", "deep").calls == 1 &&
              profiler_stat(p, "scale", NULL).calls == 2,
          "past 64 levels begins are ignored and ends balance: %ld spans", profiler_span_count(p) - before);
    be->destroy(be);
    profiler_destroy(p);
    free(x);
}

// ---- roofline ------------------------------------------------------------------------------

// The table's line for (op, phase), parsed: calls, GFLOP/s, GB/s, flop/B and % roofline ("-"
// read as -1), bound. 0 when the line is missing or has another layout.
typedef struct {
    long calls;
    double gflops, gbs, ai, pct;
    char bound[16];
} TableRow;

static double num_or_dash(const char *z) { return strcmp(z, "-") ? strtod(z, NULL) : -1; }

static const char *next_line(const char *l) {
    const char *nl = strchr(l, '\n');
    return nl ? nl + 1 : l + strlen(l);
}

static int table_row(const char *text, const char *op, const char *phase, TableRow *r) {
    memset(r, 0, sizeof *r);
    for (const char *line = text; *line; line = next_line(line)) {
        char o[32], ph[32], gf[32], ai[32], pct[32];
        double total, time, mean;
        if (sscanf(line, "%31s %31s %ld %lf %lf %lf %31s %lf %31s %15s %31s", o, ph, &r->calls, &total, &time, &mean,
                   gf, &r->gbs, ai, r->bound, pct) == 11 &&
            !strcmp(o, op) && !strcmp(ph, phase)) {
            r->gflops = num_or_dash(gf), r->ai = num_or_dash(ai), r->pct = num_or_dash(pct);
            return 1;
        }
    }
    return 0;
}

static char *table_text(const Profiler *p) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    profiler_print_table(p, mem, 0);
    fclose(mem);
    return text;
}

static size_t read_text(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[got] = 0;
    if (f) fclose(f);
    return got;
}

// Spans of known duration and modelled work against ceilings of 100 GFLOP/s and 10 GB/s
// (ridge 10 flop/B): every roofline figure is exact.
static void test_roofline_table(const char *dir) {
    Profiler *p = profiler_create(0);
    profiler_set_active(p, 1);
    uint64_t t = prof_clock_ns();
    ProfOpSpan big = {"gemm", "M", {1}, 1e8, 1e6};   // 100 flop/B: 1 ms of compute, 0.1 ms of memory
    ProfOpSpan thin = {"gemm", "M", {2}, 1e6, 1e6};  // 1 flop/B: 0.1 ms of memory
    ProfOpSpan add = {"add", "n", {3}, 0, 4e6};      // no flops: 0.4 ms of memory
    ProfOpSpan bwd = {"gemm", "M", {4}, 1e6, 4e5};   // 2.5 flop/B: 0.04 ms of memory
    prof_begin(p, "forward", NULL);
    prof_record_op(p, &big, t, t + 2000000);  // at 50% of its roofline
    prof_record_op(p, &thin, t, t + 200000);  // at 50%
    prof_record_op(p, &add, t, t + 1600000);  // at 25%
    prof_end(p);
    prof_begin(p, "backward", NULL);
    prof_record_op(p, &bwd, t, t + 100000);  // at 40%
    prof_end(p);
    profiler_set_active(p, 0);

    ProfStat g = profiler_stat(p, "gemm", "forward");
    CHECK(g.roofline_ms == 0 && !g.compute_bound, "no ceilings: no roofline time (%g ms)", g.roofline_ms);
    char *text = table_text(p);
    TableRow r;
    CHECK(text && !strstr(text, "roofline") && !strstr(text, "bound") && strstr(text, "flop/B"),
          "no ceilings: no roofline columns, flop/B still shown:\n%s", text ? text : "");
    free(text);

    profiler_set_roofline(p, &(Roofline){100, 10, 0});
    // Per call, not from the row's totals: max(1.01 ms, 0.2 ms) = 1.01 ms would give 45.9%.
    g = profiler_stat(p, "gemm", "forward");
    CHECK(fabs(g.roofline_ms - 1.1) < 1e-12 && g.compute_bound, "gemm/forward: %.15g ms at the roofline, compute %d",
          g.roofline_ms, g.compute_bound);
    ProfStat a = profiler_stat(p, "add", "forward"), b = profiler_stat(p, "gemm", "backward");
    CHECK(fabs(a.roofline_ms - 0.4) < 1e-12 && !a.compute_bound, "add: %.15g ms, memory-bound", a.roofline_ms);
    CHECK(fabs(b.roofline_ms - 0.04) < 1e-12 && !b.compute_bound, "gemm/backward: %.15g ms, memory-bound",
          b.roofline_ms);

    text = table_text(p);
    CHECK(text && strstr(text, "roofline: 100.0 GFLOP/s matrix, 10.0 GB/s memory (ridge 10.0 flop/B), given\n"),
          "ceilings header:\n%s", text ? text : "");
    CHECK(text && strstr(text, "   bound % roofline\n"), "roofline column headers:\n%s", text ? text : "");
    int ok = text && table_row(text, "gemm", "forward", &r);
    CHECK(ok && r.calls == 2 && fabs(r.gflops - 45.91) < 1e-9 && fabs(r.gbs - 0.91) < 1e-9 && fabs(r.ai - 50.5) < 1e-9 &&
              !strcmp(r.bound, "compute") && fabs(r.pct - 50.0) < 1e-9,
          "gemm/forward row: calls %ld, %g GFLOP/s, %g GB/s, %g flop/B, %s, %g%% (want 2, 45.91, 0.91, 50.5, "
          "compute, 50.0)",
          r.calls, r.gflops, r.gbs, r.ai, r.bound, r.pct);
    ok = text && table_row(text, "add", "forward", &r);
    CHECK(ok && r.gflops == -1 && r.ai == -1 && !strcmp(r.bound, "memory") && fabs(r.pct - 25.0) < 1e-9,
          "add row: %g GFLOP/s, %g flop/B, %s, %g%% (want -, -, memory, 25.0)", r.gflops, r.ai, r.bound, r.pct);
    ok = text && table_row(text, "gemm", "backward", &r);
    CHECK(ok && fabs(r.ai - 2.5) < 1e-9 && !strcmp(r.bound, "memory") && fabs(r.pct - 40.0) < 1e-9,
          "gemm/backward row: %g flop/B, %s, %g%% (want 2.5, memory, 40.0)", r.ai, r.bound, r.pct);
    int longest = 0;
    for (const char *l = text ? text : ""; *l; l = next_line(l)) {
        int n = (int)strcspn(l, "\n");
        if (n > longest) longest = n;
    }
    CHECK(longest < 120, "table lines under 120 characters: %d", longest);
    if (text) fputs(text, stdout);
    free(text);

    // The ceilings in the trace's otherData, still a valid document.
    char path[512], buf[8192];
    snprintf(path, sizeof path, "%s/roofline.json", dir);
    profiler_set_roofline(p, &(Roofline){152.5, 18.25, 0.75});
    int n;
    CHECK(profiler_write_trace(p, path) == VIT_OK && read_trace(path, NULL, 0, &n) == VIT_OK && n == 3 + 6,
          "trace with ceilings written and valid (%d events): %s", n, vit_error());
    read_text(path, buf, sizeof buf);
    CHECK(strstr(buf, "\"roofline\":{\"matrix_gflops\":152.5,\"memory_gbs\":18.25,\"measured_seconds\":0.75}"),
          "ceilings in otherData:\n%s", buf);
    text = table_text(p);
    CHECK(text && strstr(text, "152.5 GFLOP/s matrix, 18.2 GB/s memory (ridge 8.4 flop/B), measured now in 0.8 s"),
          "measured ceilings header:\n%s", text ? text : "");
    free(text);

    // Ceilings that cannot divide are refused: no columns, no roofline time, none in the trace.
    Roofline bad[] = {{NAN, 10, 0}, {100, 0, 0}, {-1, 10, 0}, {100, INFINITY, 0}};
    for (int i = 0; i < 4; i++) {
        profiler_set_roofline(p, &(Roofline){100, 10, 0});
        profiler_set_roofline(p, &bad[i]);
        text = table_text(p);
        CHECK(text && !strstr(text, "roofline") && profiler_stat(p, "add", "forward").roofline_ms == 0,
              "ceilings %g, %g refused", bad[i].gflops, bad[i].gbs);
        free(text);
    }
    CHECK(profiler_write_trace(p, path) == VIT_OK, "trace without ceilings: %s", vit_error());
    CHECK(read_text(path, buf, sizeof buf) > 0 && !strstr(buf, "roofline"), "no ceilings in the trace once cleared");
    profiler_destroy(p);
}

// The CPU backend with counters on what the calibration does, failing where told. Its gemm
// takes at least 3 ms, so the calibration stays at 1024 on any machine (GEMM_SLOW), returns at
// once, so it grows to 4096 (GEMM_INSTANT), or fails (GEMM_FAIL).
enum { GEMM_SLOW, GEMM_INSTANT, GEMM_FAIL };
static int allocs, releases, fail_alloc_at, gemms, adds, rsyncs, gemm_mode, min_gemm_side, max_gemm_side;
static size_t add_n;

static void *mock_alloc(Backend *be, size_t bytes) {
    if (++allocs == fail_alloc_at) {
        vit_fail("mock: no memory for %zu bytes", bytes);
        return NULL;
    }
    return cpu->alloc(cpu, bytes);
}

static void mock_release(Backend *be, void *p) {
    releases++;
    cpu->release(cpu, p);
}

static int mock_gemm(Backend *be, int batch, int M, int N, int K, const float *A, int transA, const float *B,
                     int transB, float *C, const float *bias, float alpha, int accumulate) {
    gemms++;
    int side = M < N ? M : N;
    if (K < side) side = K;
    if (side < min_gemm_side) min_gemm_side = side;
    if (side > max_gemm_side) max_gemm_side = side;
    if (gemm_mode == GEMM_FAIL) return vit_fail("mock gemm failed");
    if (gemm_mode == GEMM_INSTANT) return VIT_OK;
    uint64_t until = prof_clock_ns() + 3000000;
    int rc = cpu->gemm(cpu, batch, M, N, K, A, transA, B, transB, C, bias, alpha, accumulate);
    while (prof_clock_ns() < until) {}
    return rc;
}

static void mock_add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    adds++;
    add_n = n;
    cpu->add(cpu, out, a, b, n);
}

static void mock_sync(Backend *be) { rsyncs++; }

static Backend counting_cpu(int mode) {
    Backend m = *cpu;
    m.alloc = mock_alloc, m.release = mock_release, m.gemm = mock_gemm, m.add = mock_add, m.synchronize = mock_sync;
    allocs = releases = fail_alloc_at = gemms = adds = rsyncs = max_gemm_side = 0;
    gemm_mode = mode;
    min_gemm_side = 1 << 30;
    add_n = 0;
    return m;
}

static void test_roofline_measure(void) {
    Backend m = counting_cpu(GEMM_SLOW);
    Roofline r;
    CHECK(roofline_measure(&m, &r) == VIT_OK, "measured: %s", vit_error());
    printf("roofline of the 1-thread CPU backend: %.1f GFLOP/s, %.2f GB/s, in %.2f s\n", r.gflops, r.gbs, r.seconds);
    CHECK(isfinite(r.gflops) && r.gflops > 0 && isfinite(r.gbs) && r.gbs > 0 && isfinite(r.seconds) && r.seconds > 0,
          "positive finite ceilings: %g GFLOP/s, %g GB/s, %g s", r.gflops, r.gbs, r.seconds);
    CHECK(roofline_valid(&r), "roofline_valid agrees");
    CHECK(allocs == 6 && releases == 6, "3 gemm and 3 add buffers, all released: %d allocs, %d releases", allocs,
          releases);
    CHECK(gemms >= 4 && min_gemm_side == 1024 && max_gemm_side == 1024,
          "%d gemm calls, sides %d..%d (want >= 4 calls of 1024: a product over 2 ms is not grown)", gemms,
          min_gemm_side, max_gemm_side);
    CHECK(adds >= 4 && add_n == ((size_t)64 << 20) / sizeof(float), "%d add calls over %zu elements", adds, add_n);
    // A warm-up, a probe and at least two batches each, every one between two synchronizes.
    CHECK(rsyncs >= 2 * (4 + 4), "synchronized around the timings: %d", rsyncs);

    // A product that takes no time is grown to 4096; one that no longer fits keeps the last figure.
    m = counting_cpu(GEMM_INSTANT);
    CHECK(roofline_measure(&m, &r) == VIT_OK && roofline_valid(&r) && max_gemm_side == 4096 && allocs == 12 &&
              releases == 12,
          "an instant gemm grows to %d (want 4096) with %d allocs, %d releases (want 12): %s", max_gemm_side, allocs,
          releases, vit_error());
    m = counting_cpu(GEMM_INSTANT);
    fail_alloc_at = 4;  // the first 2048 buffer
    CHECK(roofline_measure(&m, &r) == VIT_OK && roofline_valid(&r) && max_gemm_side == 1024 && releases == allocs - 1,
          "a larger size that does not fit keeps 1024's figure: side %d, %d releases of %d allocs: %s", max_gemm_side,
          releases, allocs - 1, vit_error());

    m = counting_cpu(GEMM_FAIL);
    r = (Roofline){1, 1, 1};
    CHECK(roofline_measure(&m, &r) == VIT_ERR && strstr(vit_error(), "mock gemm failed") &&
              strstr(vit_error(), "1024 x 1024 x 1024") && r.gflops == 0 && r.gbs == 0,
          "a failing gemm is reported: %s", vit_error());
    CHECK(releases == allocs, "buffers released after the failure: %d of %d", releases, allocs);

    for (int at = 1; at <= 6; at++) {  // each of the gemm's and the add's three buffers
        m = counting_cpu(GEMM_SLOW);
        fail_alloc_at = at;
        CHECK(roofline_measure(&m, &r) == VIT_ERR && strstr(vit_error(), "mock: no memory") && !roofline_valid(&r),
              "alloc %d failing is reported: %s", at, vit_error());
        CHECK(releases == allocs - 1, "alloc %d failing: %d released of %d allocated", at, releases, allocs - 1);
    }
    CHECK(roofline_measure(NULL, &r) == VIT_ERR && roofline_measure(cpu, NULL) == VIT_ERR, "bad arguments refused");
}

int main(void) {
    cpu = backend_cpu_create(1);
    if (!cpu) {
        fprintf(stderr, "%s\n", vit_error());
        return 1;
    }
    char dir[] = "/tmp/vitc_profile_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_wrapped(dir);
    test_large_trace(dir);
    test_sync();
    test_phases();
    test_roofline_table(dir);
    test_roofline_measure();
    testdir_remove(dir);
    cpu->destroy(cpu);
    return check_report("test_profile");
}
