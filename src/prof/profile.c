// The step profiler: spans in one growable array (in start order, since an op is appended
// when it ends but always starts after every earlier span ended or began), phase names
// interned so that op spans can point at their phase, and the trace and table built from
// the array when asked.
#include "profile.h"
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/atomic_file.h"
#include "io/json.h"
#include "util/clock.h"
#include "util/status.h"

// Spans cost ~130 bytes, so the cap is ~270 MiB: thousands of ViT-B steps, yet a profiler
// left on by mistake cannot take the machine's memory.
enum { PROF_MAX_DEPTH = 64, PROF_MAX_SPANS = 1 << 21 };
#define SPAN_OPEN UINT64_MAX

typedef struct {
    const char *name, *cat;  // ops: literals, cat "op"; phases: interned copies
    const char *phase;       // ops: innermost non-step phase (interned), NULL outside any
    const char *dims;        // ops: names of dim[]; NULL marks a phase span
    uint64_t ts, dur;        // ns since profiler_create; dur SPAN_OPEN while a phase is open
    double flops, bytes;
    int64_t dim[8];
} Span;

typedef struct {
    long span;  // index in spans, -1 when begun while inactive (or dropped)
    const char *name;
    int is_step;
} OpenPhase;

struct Profiler {
    int rank, active;
    uint64_t t0;                         // creation, the trace's time zero
    uint64_t active_ns, active_since;    // time spent active, for "% of profiled time"
    Span *spans;
    long n, cap, dropped;
    char **names;                        // interned phase names and categories
    int n_names, cap_names;
    OpenPhase open[PROF_MAX_DEPTH];
    int depth, overflow;                 // overflow: begins past the depth limit, ignored
    Roofline roof;                       // the machine's ceilings; zero when not set
};

uint64_t prof_clock_ns(void) { return clock_ns(); }

Profiler *profiler_create(int rank) {
    Profiler *p = calloc(1, sizeof *p);
    if (!p) {
        vit_fail("out of memory creating the profiler");
        return NULL;
    }
    p->rank = rank;
    p->t0 = prof_clock_ns();
    return p;
}

void profiler_destroy(Profiler *p) {
    if (!p) return;
    for (int i = 0; i < p->n_names; i++) free(p->names[i]);
    free(p->names);
    free(p->spans);
    free(p);
}

void profiler_set_active(Profiler *p, int on) {
    if (!p || !on == !p->active) return;
    uint64_t now = prof_clock_ns();
    if (on) p->active_since = now;
    else p->active_ns += now - p->active_since;
    p->active = !!on;
}

int profiler_active(const Profiler *p) { return p && p->active; }

void profiler_set_roofline(Profiler *p, const Roofline *r) {
    if (p) p->roof = roofline_valid(r) ? *r : (Roofline){0};
}

// An op span's time at the roofline in ns (flops per ns = GFLOP/s, bytes per ns = GB/s), and
// whether compute limits it. Summed per call, not from a row's totals: a row mixing
// compute- and memory-bound shapes is bound by each call's own limit.
static double roof_ns(const Roofline *r, const Span *s, int *compute) {
    double c = s->flops / r->gflops, m = s->bytes / r->gbs;
    *compute = c > m;
    return c > m ? c : m;
}

static uint64_t profiled_ns(const Profiler *p) {
    return p->active_ns + (p->active ? prof_clock_ns() - p->active_since : 0);
}

// A stable copy of z (the same pointer for equal names, so spans compare phases by pointer).
// Trainer names are few ("forward", one "step N" per step), so a linear search does.
static const char *intern(Profiler *p, const char *z) {
    if (!z) z = "";
    if (!json_utf8_valid(z)) z = "(name not UTF-8)";  // the trace must stay valid JSON
    for (int i = p->n_names - 1; i >= 0; i--)
        if (!strcmp(p->names[i], z)) return p->names[i];
    if (p->n_names == p->cap_names) {
        int nc = p->cap_names ? 2 * p->cap_names : 32;
        char **nn = realloc(p->names, (size_t)nc * sizeof *nn);
        if (!nn) return NULL;
        p->names = nn;
        p->cap_names = nc;
    }
    char *copy = strdup(z);
    if (copy) p->names[p->n_names++] = copy;
    return copy;
}

// A new zeroed span at the end, or NULL (counted as dropped) at the cap or out of memory.
static Span *push_span(Profiler *p) {
    if (p->n == p->cap) {
        long nc = p->cap ? 2 * p->cap : 4096;
        if (nc > PROF_MAX_SPANS) nc = PROF_MAX_SPANS;
        Span *ns = nc > p->cap ? realloc(p->spans, (size_t)nc * sizeof *ns) : NULL;
        if (!ns) {
            p->dropped++;
            return NULL;
        }
        p->spans = ns;
        p->cap = nc;
    }
    Span *s = &p->spans[p->n++];
    memset(s, 0, sizeof *s);
    return s;
}

void prof_begin(Profiler *p, const char *name, const char *cat) {
    if (!p) return;
    if (p->depth == PROF_MAX_DEPTH) {
        p->overflow++;
        return;
    }
    // Pushed even while inactive, so that the matching prof_end pops the right entry.
    OpenPhase *o = &p->open[p->depth++];
    o->span = -1;
    if (!p->active) return;
    uint64_t now = prof_clock_ns();
    const char *n = intern(p, name), *c = intern(p, cat ? cat : "phase");
    Span *s = n && c ? push_span(p) : NULL;
    if (!s) {
        if (!n || !c) p->dropped++;
        return;
    }
    s->name = n;
    s->cat = c;
    s->ts = now - p->t0;
    s->dur = SPAN_OPEN;
    o->span = p->n - 1;
    o->name = n;
    o->is_step = !strcmp(c, "step");
}

void prof_end(Profiler *p) {
    if (!p) return;
    if (p->overflow) {
        p->overflow--;
        return;
    }
    if (!p->depth) return;  // unbalanced: nothing to close
    OpenPhase *o = &p->open[--p->depth];
    if (o->span >= 0) p->spans[o->span].dur = prof_clock_ns() - p->t0 - p->spans[o->span].ts;
}

void prof_record_op(Profiler *p, const ProfOpSpan *op, uint64_t start_ns, uint64_t end_ns) {
    if (!p || !p->active) return;
    Span *s = push_span(p);
    if (!s) return;
    s->name = op->name;
    s->cat = "op";
    s->dims = op->dims ? op->dims : "";
    s->ts = start_ns - p->t0;
    s->dur = end_ns - start_ns;
    s->flops = op->flops;
    s->bytes = op->bytes;
    memcpy(s->dim, op->dim, sizeof s->dim);
    for (int i = p->depth - 1; i >= 0; i--)
        if (p->open[i].span >= 0 && !p->open[i].is_step) {
            s->phase = p->open[i].name;
            break;
        }
}

long profiler_span_count(const Profiler *p) { return p ? p->n : 0; }

static uint64_t span_dur(const Span *s, uint64_t now_rel) {
    return s->dur != SPAN_OPEN ? s->dur : now_rel > s->ts ? now_rel - s->ts : 0;
}

// ---- the trace ---------------------------------------------------------------------------

// Microseconds with exact nanoseconds: integer arithmetic, no float rounding, so a child's
// interval stays inside its parent's in the file too.
static void put_us(JsonBuf *b, const char *key, uint64_t ns) {
    json_printf(b, ",\"%s\":%" PRIu64 ".%03u", key, ns / 1000, (unsigned)(ns % 1000));
}

static void put_span(JsonBuf *b, const Span *s, int pid, uint64_t now_rel) {
    json_puts(b, ",\n{\"name\":");
    json_put_string(b, s->name);
    json_puts(b, ",\"cat\":");
    json_put_string(b, s->cat);
    json_puts(b, ",\"ph\":\"X\"");
    put_us(b, "ts", s->ts);
    put_us(b, "dur", span_dur(s, now_rel));
    json_printf(b, ",\"pid\":%d,\"tid\":0", pid);
    if (s->dims) {
        json_puts(b, ",\"args\":{");
        // dims is "a,b,c": each name with its value, in order.
        const char *d = s->dims;
        for (int i = 0; *d && i < 8; i++) {
            size_t len = strcspn(d, ",");
            json_printf(b, "\"%.*s\":%" PRId64 ",", (int)len, d, s->dim[i]);
            d += len + (d[len] == ',');
        }
        json_printf(b, "\"flops\":%.0f,\"bytes\":%.0f}", s->flops, s->bytes);
    } else if (s->dur == SPAN_OPEN) {
        json_puts(b, ",\"args\":{\"open\":true}");
    }
    json_puts(b, "}");
}

// Moves the buffered text to f; the buffer is reused, so a long trace never sits in memory whole.
static int drain(JsonBuf *b, FILE *f) {
    int ok = !b->oom && (!b->n || fwrite(b->p, 1, b->n, f) == b->n);
    b->n = 0;
    return ok;
}

int profiler_write_trace(const Profiler *p, const char *path) {
    if (!path || !*path) return vit_fail("profiler_write_trace: empty path");
    if (!p) return vit_fail("%s: cannot write the trace: no profiler", path);
    char *tmp = atomic_temp_path(path);
    if (!tmp) return vit_fail("%s: cannot write the trace: out of memory", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int rc = vit_fail("%s: cannot write the trace: creating %s failed: %s", path, tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    uint64_t now_rel = prof_clock_ns() - p->t0;
    JsonBuf b = {0};
    int r = p->rank, ok = 1;
    json_printf(&b, "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
                    "\"args\":{\"name\":\"rank %d\"}}", r, r);
    // Ranks listed in order when the files of several ranks are merged into one.
    json_printf(&b, ",\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
                    "\"args\":{\"sort_index\":%d}}", r, r);
    json_printf(&b, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
                    "\"args\":{\"name\":\"trainer\"}}", r);
    for (long i = 0; i < p->n; i++) {
        put_span(&b, &p->spans[i], r, now_rel);
        if (b.n >= (1u << 20)) ok = drain(&b, f) && ok;
    }
    json_printf(&b, "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"rank\":%d,\"dropped_spans\":%ld", r, p->dropped);
    if (roofline_valid(&p->roof))  // valid means finite, so %g stays valid JSON
        json_printf(&b, ",\"roofline\":{\"matrix_gflops\":%.6g,\"memory_gbs\":%.6g,\"measured_seconds\":%.6g}",
                    p->roof.gflops, p->roof.gbs, p->roof.seconds);
    json_puts(&b, "}}\n");
    int oom = b.oom;
    ok = drain(&b, f) && ok;
    int err = errno;
    free(b.p);
    if (ok) {
        ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
        err = errno;
    }
    if (fclose(f) != 0 && ok) ok = 0, err = errno;
    int rc, renamed = 0;
    if (oom) rc = vit_fail("%s: cannot write the trace: out of memory", path);
    else if (!ok) rc = vit_fail("%s: cannot write the trace: writing %s failed: %s", path, tmp, strerror(err));
    else rc = atomic_commit(tmp, path, &renamed);
    if (!renamed) unlink(tmp);
    free(tmp);
    return rc;
}

// ---- the table -----------------------------------------------------------------------------

typedef struct {
    const char *name, *phase;  // phase rows: phase NULL
    long calls;
    uint64_t ns;
    double flops, bytes;
    double roof_ns, roof_compute_ns;  // time at the roofline; the part of compute-bound calls
} Row;

static int row_cmp(const void *a, const void *b) {
    const Row *x = a, *y = b;
    if (x->ns != y->ns) return x->ns > y->ns ? -1 : 1;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->phase ? x->phase : "", y->phase ? y->phase : "");
}

// Adds span s to the row (name, phase), creating it. Phases are interned, so they compare by
// pointer; op names are literals that may repeat, so they compare by text. VIT_ERR when out
// of memory.
typedef struct {
    Row *r;
    int n, cap;
} Rows;

static int add_row(Rows *rows, const char *name, const char *phase, const Span *s, uint64_t dur, const Roofline *roof) {
    int i = 0;
    while (i < rows->n && (rows->r[i].phase != phase || strcmp(rows->r[i].name, name))) i++;
    if (i == rows->n) {
        if (rows->n == rows->cap) {
            int nc = rows->cap ? 2 * rows->cap : 64;
            Row *nr = realloc(rows->r, (size_t)nc * sizeof *nr);
            if (!nr) return VIT_ERR;
            rows->r = nr;
            rows->cap = nc;
        }
        rows->r[rows->n++] = (Row){name, phase, 0, 0, 0, 0, 0, 0};
    }
    Row *r = &rows->r[i];
    r->calls++;
    r->ns += dur;
    r->flops += s->flops;
    r->bytes += s->bytes;
    if (roof) {
        int compute;
        double t = roof_ns(roof, s, &compute);
        r->roof_ns += t;
        r->roof_compute_ns += compute ? t : 0;
    }
    return VIT_OK;
}

// Op rows (want_ops) or phase rows, sorted by time (a few dozen: one per op kind and phase).
static int collect(const Profiler *p, int want_ops, Rows *rows) {
    *rows = (Rows){0};
    uint64_t now_rel = prof_clock_ns() - p->t0;
    const Roofline *roof = roofline_valid(&p->roof) ? &p->roof : NULL;
    for (long i = 0; i < p->n; i++) {
        const Span *s = &p->spans[i];
        if (!s->dims != !want_ops) continue;
        int rc = want_ops ? add_row(rows, s->name, s->phase, s, s->dur, roof)
                          // Steps are summed as one row named by their category.
                          : add_row(rows, strcmp(s->cat, "step") ? s->name : s->cat, NULL, s, span_dur(s, now_rel),
                                    NULL);
        if (rc) return VIT_ERR;
    }
    if (rows->n) qsort(rows->r, (size_t)rows->n, sizeof *rows->r, row_cmp);
    return VIT_OK;
}

ProfStat profiler_stat(const Profiler *p, const char *op, const char *phase) {
    ProfStat st = {0};
    if (!p || !op) return st;
    if (phase && !*phase) phase = NULL;
    uint64_t ns = 0;
    double roof = 0, roof_compute = 0;
    for (long i = 0; i < p->n; i++) {
        const Span *s = &p->spans[i];
        if (!s->dims || strcmp(s->name, op) || !s->phase != !phase || (phase && strcmp(s->phase, phase))) continue;
        st.calls++;
        ns += s->dur;
        st.flops += s->flops;
        st.bytes += s->bytes;
        if (roofline_valid(&p->roof)) {
            int compute;
            double t = roof_ns(&p->roof, s, &compute);
            roof += t;
            roof_compute += compute ? t : 0;
        }
    }
    st.total_ms = ns / 1e6;
    st.roofline_ms = roof / 1e6;
    st.compute_bound = roof > 0 && 2 * roof_compute > roof;
    return st;
}

static int max_len(const Row *rows, int n, int phase_col, int at_least) {
    int w = at_least;
    for (int i = 0; i < n; i++) {
        const char *z = phase_col ? (rows[i].phase ? rows[i].phase : "-") : rows[i].name;
        int l = (int)strlen(z);
        if (l > w) w = l;
    }
    return w;
}

void profiler_print_table(const Profiler *p, FILE *out, int top) {
    if (!p || !out) return;
    double prof_ms = profiled_ns(p) / 1e6;
    Rows op_rows, ph_rows;
    int bad = collect(p, 1, &op_rows);
    bad = collect(p, 0, &ph_rows) || bad;
    if (bad) {
        fprintf(out, "profile, rank %d: out of memory for the table\n", p->rank);
        free(op_rows.r), free(ph_rows.r);
        return;
    }
    const Row *ops = op_rows.r, *phases = ph_rows.r;
    int n_ops = op_rows.n, n_ph = ph_rows.n, roof = roofline_valid(&p->roof);
    long calls = 0;
    uint64_t op_ns = 0;
    for (int i = 0; i < n_ops; i++) calls += ops[i].calls, op_ns += ops[i].ns;
    double pct_div = prof_ms > 0 ? prof_ms : 1;
    fprintf(out, "profile, rank %d: %.3f ms profiled; %ld op calls take %.3f ms (%.1f%%)\n", p->rank, prof_ms, calls,
            op_ns / 1e6, 100 * op_ns / 1e6 / pct_div);
    if (roof) {
        char how[64] = "given";
        if (p->roof.seconds > 0) snprintf(how, sizeof how, "measured now in %.1f s", p->roof.seconds);
        // The ridge: an op with more flop per byte than this is compute-bound.
        fprintf(out, "roofline: %.1f GFLOP/s matrix, %.1f GB/s memory (ridge %.1f flop/B), %s\n", p->roof.gflops,
                p->roof.gbs, p->roof.gflops / p->roof.gbs, how);
    }
    if (p->dropped)
        fprintf(out, "  (%ld spans dropped at the cap of %d: the figures below miss them)\n", p->dropped,
                PROF_MAX_SPANS);
    int wo = max_len(ops, n_ops, 0, 2), wp = max_len(ops, n_ops, 1, 5), shown = top > 0 && top < n_ops ? top : n_ops;
    if (n_ops) {
        fprintf(out, "%-*s  %-*s %7s %10s %7s %10s %9s %8s %6s%s\n", wo, "op", wp, "phase", "calls", "total ms",
                "% time", "mean us", "GFLOP/s", "GB/s", "flop/B", roof ? "   bound % roofline" : "");
        for (int i = 0; i < shown; i++) {
            const Row *r = &ops[i];
            double ns = r->ns > 0 ? (double)r->ns : 1;  // flops per ns = GFLOP/s
            char gf[32] = "-", ai[32] = "-", rf[48] = "";
            if (r->flops > 0) snprintf(gf, sizeof gf, "%.2f", r->flops / ns);
            if (r->flops > 0 && r->bytes > 0) snprintf(ai, sizeof ai, "%.1f", r->flops / r->bytes);
            if (roof && r->roof_ns > 0)
                snprintf(rf, sizeof rf, " %7s %10.1f", 2 * r->roof_compute_ns > r->roof_ns ? "compute" : "memory",
                         100 * r->roof_ns / ns);
            else if (roof)
                snprintf(rf, sizeof rf, " %7s %10s", "-", "-");
            fprintf(out, "%-*s  %-*s %7ld %10.3f %7.1f %10.1f %9s %8.2f %6s%s\n", wo, r->name, wp,
                    r->phase ? r->phase : "-", r->calls, r->ns / 1e6, 100 * r->ns / 1e6 / pct_div,
                    r->ns / 1e3 / r->calls, gf, r->bytes / ns, ai, rf);
        }
        if (shown < n_ops) {
            uint64_t rest = 0;
            for (int i = shown; i < n_ops; i++) rest += ops[i].ns;
            fprintf(out, "(%d more rows: %.3f ms, %.1f%%)\n", n_ops - shown, rest / 1e6, 100 * rest / 1e6 / pct_div);
        }
    }
    if (n_ph) {
        int wn = max_len(phases, n_ph, 0, 5);
        fprintf(out, "%-*s %8s %11s %7s %11s\n", wn, "phase", "calls", "total ms", "% time", "mean ms");
        for (int i = 0; i < n_ph; i++)
            fprintf(out, "%-*s %8ld %11.3f %7.1f %11.3f\n", wn, phases[i].name, phases[i].calls, phases[i].ns / 1e6,
                    100 * phases[i].ns / 1e6 / pct_div, phases[i].ns / 1e6 / phases[i].calls);
    }
    free(op_rows.r);
    free(ph_rows.r);
}
