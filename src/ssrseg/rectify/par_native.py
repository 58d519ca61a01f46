"""Optional compiled CPU kernels for PAR (``ssrseg.rectify.par``), built on first use.

Why: PAR's torch form issues ``M = 48`` small element-wise kernels per iteration (960 for 20
iterations). Each one streams the whole score tensor through memory, and with more than one
intra-op thread every one of them is a separate parallel region whose threads must all be
scheduled before it can finish; on a loaded machine a thread that waits a scheduler slice per
region makes PAR 20x slower with 2 threads than with 1. The kernels here do the same
arithmetic, in the same order, pixel row by pixel row (the output row stays in L1 while all 48
neighbour terms are added), and synchronise threads once per iteration, not once per
neighbour. Idle threads sleep on a condition variable instead of spinning.

Two functions, float32 and float64 each:

- ``par_weights``: the neighbour weights ``B x M x H x W`` of :func:`par.par_weights` (colour
  logits, softmax over the neighbours with a vectorisable ``exp``, position term);
- ``par_propagate``: ``iterations`` steps of ``s(p) <- sum_m w_m(p) s(p + o_m)`` with clamped
  (replicate-padded) neighbour coordinates.

The C source below is compiled with the system C compiler (``$CC``, else ``cc`` / ``gcc`` /
``clang``) into ``<cache>/kernels/`` (``$SSRSEG_CACHE``, ``$XDG_CACHE_HOME/ssrseg`` or
``~/.cache/ssrseg``) and loaded with ctypes, which releases the GIL during the call. The
build takes well under a second; the library's name hashes the source, the flags and the CPU,
so a shared cache never serves a library built for another CPU. The compiler may fuse
``a + w * s`` into one fused multiply-add, as torch's ``addcmul_`` does on such CPUs; the
results equal the torch form within float rounding (tested against it and a plain reference).

Without a compiler, on a failed build, with ``SSRSEG_PAR_NATIVE=0``, on a GPU, for other
dtypes, or when autograd needs PAR's graph, :mod:`ssrseg.rectify.par` uses its torch form.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ssrseg.backbones.weights import cache_dir

ENV_SWITCH = "SSRSEG_PAR_NATIVE"  # "0" disables the compiled kernels

_SOURCE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A reusable barrier on a mutex and a condition variable: waiting threads sleep (macOS has
   no pthread_barrier_t, and spinning would steal the core from the thread being waited for). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int count, waiting;
    long generation;
} barrier_t;

static void barrier_init(barrier_t* b, int count) {
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->count = count;
    b->waiting = 0;
    b->generation = 0;
}

static void barrier_destroy(barrier_t* b) {
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void barrier_wait(barrier_t* b) {
    pthread_mutex_lock(&b->mu);
    long gen = b->generation;
    if (++b->waiting == b->count) {
        b->waiting = 0;
        b->generation++;
        pthread_cond_broadcast(&b->cv);
    } else {
        while (gen == b->generation) pthread_cond_wait(&b->cv, &b->mu);
    }
    pthread_mutex_unlock(&b->mu);
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Work shared by the threads of one call; rows are handed out in chunks by atomic counters
   (one counter per iteration), so a thread that is descheduled simply takes fewer chunks.
   Image and score planes are stored with `pad` replicated columns on both sides (row stride
   w + 2 pad): a horizontal shift is then a plain offset; a vertical one clamps the row. */
typedef struct {
    int64_t b, c, h, w, pad;
    int m, iterations, nthreads;
    const int* dy;
    const int* dx;
    int64_t chunk, nchunks;
    int64_t* counters;
    barrier_t barrier;
    const void* in;   /* padded images (logits) or weights B x M x H x W (propagate) */
    void* buf[2];     /* logits: buf[0] is the B x M x H x W output; propagate: padded
                         ping-pong score buffers */
    double eps, temperature;
    const void* pos;  /* weights: position_weight * position softmax, M values */
    double norm;      /* weights: divide by this (1 + position_weight) when > 0 */
    int is_double;
} job_t;

/* exp for float32 in a form the compiler can vectorise: x = n ln2 + r with |r| <= ln2 / 2,
   e^r by its degree-7 Taylor polynomial (relative error below 2e-7 on that range, about one
   float32 ulp; torch's vectorised exp is as close), times 2^n built in the exponent bits.
   Below -87.3 the result is 0 (torch returns denormals there, all below 1.2e-38). */
static inline float exp_f32(float x) {
    const float big = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x > 88.0f ? 88.0f : (x < -87.3f ? -87.3f : x);
    float t = xc * 1.44269504088896341f + big;
    float n = t - big;
    float r = xc - n * 0.693359375f;       /* ln 2 in two parts: the first is exact in n * */
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    int32_t e = (bits - 0x4B400000) + 127; /* n + 127, from t's mantissa */
    int32_t scale_bits = e << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

/* 32-byte vectors (GCC / clang vector extensions; split into narrower ones where the CPU
   has none): four accumulators per column tile stay in registers over all M neighbours. */
typedef float vf32 __attribute__((vector_size(32)));
typedef double vf64 __attribute__((vector_size(32)));
static inline vf32 load_f32(const float* p) { vf32 v; memcpy(&v, p, sizeof v); return v; }
static inline vf64 load_f64(const double* p) { vf64 v; memcpy(&v, p, sizeof v); return v; }

#define DEFINE_KERNELS(T, SUF, SQRT, EXP, V, LANES)                                           \
/* PAR weights of rows [r0, r1) (global row r = image * h + y), see par.par_weights: colour */ \
/* logits, softmax over the neighbours, position term; mean, inv: c x w scratch rows.     */ \
static void logits_rows_##SUF(job_t* J, int64_t r0, int64_t r1, T* mean, T* inv) {          \
    const T* img = (const T*)J->in;                                                        \
    T* out = (T*)J->buf[0];                                                                \
    const int64_t C = J->c, h = J->h, w = J->w, wp = w + 2 * J->pad;                       \
    const int m = J->m;                                                                    \
    const T eps = (T)J->eps, t = (T)J->temperature, dof = (T)(m > 1 ? m - 1 : 1);          \
    for (int64_t r = r0; r < r1; r++) {                                                    \
        const int64_t bb = r / h, y = r % h;                                               \
        for (int64_t c = 0; c < C; c++) {                                                  \
            const T* plane = img + (bb * C + c) * h * wp + J->pad;                         \
            T* restrict mu = mean + c * w;                                                 \
            T* restrict iv = inv + c * w;                                                  \
            for (int64_t x = 0; x < w; x++) mu[x] = 0;                                     \
            for (int j = 0; j < m; j++) {                                                  \
                const T* restrict s = plane + clamp64(y + J->dy[j], 0, h - 1) * wp + J->dx[j]; \
                for (int64_t x = 0; x < w; x++) mu[x] += s[x];                             \
            }                                                                              \
            for (int64_t x = 0; x < w; x++) mu[x] /= (T)m;                                 \
            for (int64_t x = 0; x < w; x++) iv[x] = 0;                                     \
            for (int j = 0; j < m; j++) {                                                  \
                const T* restrict s = plane + clamp64(y + J->dy[j], 0, h - 1) * wp + J->dx[j]; \
                for (int64_t x = 0; x < w; x++) { T e = s[x] - mu[x]; iv[x] += e * e; }    \
            }                                                                              \
            for (int64_t x = 0; x < w; x++) iv[x] = (T)1 / ((SQRT(iv[x] / dof) + eps) * t); \
        }                                                                                  \
        for (int j = 0; j < m; j++) {                                                      \
            T* restrict o = out + ((bb * m + j) * h + y) * w;                              \
            const int64_t ys = clamp64(y + J->dy[j], 0, h - 1);                            \
            for (int64_t x = 0; x < w; x++) o[x] = 0;                                      \
            for (int64_t c = 0; c < C; c++) {                                              \
                const T* plane = img + (bb * C + c) * h * wp + J->pad;                     \
                const T* restrict s = plane + ys * wp + J->dx[j];                          \
                const T* restrict p = plane + y * wp;                                      \
                const T* restrict iv = inv + c * w;                                        \
                for (int64_t x = 0; x < w; x++) { T e = (s[x] - p[x]) * iv[x]; o[x] += e * e; } \
            }                                                                              \
            for (int64_t x = 0; x < w; x++) o[x] = -(o[x] / (T)C);                         \
        }                                                                                  \
        /* softmax over the M neighbours, plus the position term (mean, inv as scratch) */  \
        const T* pos = (const T*)J->pos;                                                   \
        T* restrict mx = mean;                                                             \
        T* restrict sum = inv;                                                             \
        const T* o0 = out + (bb * m * h + y) * w;                                          \
        for (int64_t x = 0; x < w; x++) { mx[x] = o0[x]; sum[x] = 0; }                     \
        for (int j = 1; j < m; j++) {                                                      \
            const T* restrict o = out + ((bb * m + j) * h + y) * w;                        \
            for (int64_t x = 0; x < w; x++) mx[x] = o[x] > mx[x] ? o[x] : mx[x];           \
        }                                                                                  \
        for (int j = 0; j < m; j++) {                                                      \
            T* restrict o = out + ((bb * m + j) * h + y) * w;                              \
            for (int64_t x = 0; x < w; x++) { o[x] = EXP(o[x] - mx[x]); sum[x] += o[x]; }  \
        }                                                                                  \
        for (int64_t x = 0; x < w; x++) sum[x] = (T)1 / sum[x];                            \
        for (int j = 0; j < m; j++) {                                                      \
            T* restrict o = out + ((bb * m + j) * h + y) * w;                              \
            const T pj = pos[j];                                                           \
            for (int64_t x = 0; x < w; x++) o[x] = o[x] * sum[x] + pj;                     \
            if (J->norm > 0) {                                                             \
                const T nd = (T)J->norm;                                                   \
                for (int64_t x = 0; x < w; x++) o[x] = o[x] / nd;                          \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* One propagation step for rows [r0, r1): dst = sum_j w_j * shift_j(src), j in order,    */ \
/* accumulated in registers over tiles of 4 LANES columns; then the row's padding columns. */ \
/* soff (M row offsets) and wrow (M weight rows) are scratch.                              */ \
static void propagate_rows_##SUF(job_t* J, const T* src, T* dst, int64_t r0, int64_t r1,     \
                                 int64_t* soff, const T** wrow) {                           \
    const T* wts = (const T*)J->in;                                                        \
    const int64_t K = J->c, h = J->h, w = J->w, pad = J->pad, wp = w + 2 * pad;            \
    const int m = J->m;                                                                    \
    for (int64_t r = r0; r < r1; r++) {                                                    \
        const int64_t bb = r / h, y = r % h;                                               \
        for (int j = 0; j < m; j++) {                                                      \
            wrow[j] = wts + ((bb * m + j) * h + y) * w;                                    \
            soff[j] = clamp64(y + J->dy[j], 0, h - 1) * wp + pad + J->dx[j];               \
        }                                                                                  \
        const T* planes = src + bb * K * h * wp;                                           \
        T* orow = dst + (bb * K * h + y) * wp + pad;                                       \
        int64_t x0;                                                                        \
        /* channel blocks of 4 outside, tile, channel inside: a tile's M weight vectors   */ \
        /* stay in L1 over a block, the block's neighbour rows in L2 over the row         */ \
        for (int64_t k0 = 0; k0 < K; k0 += 4) {                                            \
          const int64_t k1 = k0 + 4 < K ? k0 + 4 : K;                                      \
          for (x0 = 0; x0 + 4 * LANES <= w; x0 += 4 * LANES) {                             \
            for (int64_t k = k0; k < k1; k++) {                                            \
                const T* plane = planes + k * h * wp + x0;                                 \
                V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                  \
                for (int j = 0; j < m; j++) {                                              \
                    const T* s = plane + soff[j];                                          \
                    const T* wr = wrow[j] + x0;                                            \
                    a0 += load_##SUF(wr) * load_##SUF(s);                                  \
                    a1 += load_##SUF(wr + LANES) * load_##SUF(s + LANES);                  \
                    a2 += load_##SUF(wr + 2 * LANES) * load_##SUF(s + 2 * LANES);          \
                    a3 += load_##SUF(wr + 3 * LANES) * load_##SUF(s + 3 * LANES);          \
                }                                                                          \
                T* o = orow + k * h * wp + x0;                                             \
                memcpy(o, &a0, sizeof(V));                                                 \
                memcpy(o + LANES, &a1, sizeof(V));                                         \
                memcpy(o + 2 * LANES, &a2, sizeof(V));                                     \
                memcpy(o + 3 * LANES, &a3, sizeof(V));                                     \
            }                                                                              \
          }                                                                                \
        }                                                                                  \
        x0 = w - w % (4 * LANES);                                                          \
        for (int64_t k = 0; k < K; k++) {                                                  \
            const T* plane = planes + k * h * wp;                                          \
            T* o = orow + k * h * wp;                                                      \
            for (int64_t x = x0; x < w; x++) {                                             \
                T acc = 0;                                                                 \
                for (int j = 0; j < m; j++) acc += wrow[j][x] * plane[soff[j] + x];        \
                o[x] = acc;                                                                \
            }                                                                              \
            for (int64_t x = 1; x <= pad; x++) {                                           \
                o[-x] = o[0];                                                              \
                o[w - 1 + x] = o[w - 1];                                                   \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

DEFINE_KERNELS(float, f32, sqrtf, exp_f32, vf32, 8)
DEFINE_KERNELS(double, f64, sqrt, exp, vf64, 4)

static int64_t next_chunk(job_t* J, int it) {
    return __atomic_fetch_add(&J->counters[it], 1, __ATOMIC_RELAXED);
}

/* Workers wait at a start gate until the caller knows how many threads really started, so
   the per-iteration barrier always counts exactly the threads that run. */
typedef struct {
    job_t* job;
    void* (*body)(job_t*);
    pthread_mutex_t* mu;
    pthread_cond_t* cv;
    int* go;
} start_t;

static void* gated(void* arg) {
    start_t* s = (start_t*)arg;
    pthread_mutex_lock(s->mu);
    while (!*s->go) pthread_cond_wait(s->cv, s->mu);
    pthread_mutex_unlock(s->mu);
    return s->body(s->job);
}

static void* logits_worker(job_t* J) {
    size_t el = J->is_double ? sizeof(double) : sizeof(float);
    void* tmp = malloc(2 * (size_t)J->c * (size_t)J->w * el);
    if (!tmp) return (void*)1;
    int64_t ch, rows = J->b * J->h;
    while ((ch = next_chunk(J, 0)) < J->nchunks) {
        int64_t r0 = ch * J->chunk, r1 = r0 + J->chunk < rows ? r0 + J->chunk : rows;
        if (J->is_double)
            logits_rows_f64(J, r0, r1, (double*)tmp, (double*)tmp + J->c * J->w);
        else
            logits_rows_f32(J, r0, r1, (float*)tmp, (float*)tmp + J->c * J->w);
    }
    free(tmp);
    return NULL;
}

static void* propagate_worker(job_t* J) {
    int64_t rows = J->b * J->h;
    int64_t* soff = (int64_t*)malloc((size_t)J->m * sizeof(int64_t));
    const void** wrow = (const void**)malloc((size_t)J->m * sizeof(void*));
    int failed = !soff || !wrow; /* still joins every barrier: the others wait for it */
    for (int it = 0; it < J->iterations; it++) {
        const void* src = J->buf[it % 2];
        void* dst = J->buf[(it + 1) % 2];
        int64_t ch;
        while (!failed && (ch = next_chunk(J, it)) < J->nchunks) {
            int64_t r0 = ch * J->chunk, r1 = r0 + J->chunk < rows ? r0 + J->chunk : rows;
            if (J->is_double)
                propagate_rows_f64(J, (const double*)src, (double*)dst, r0, r1, soff,
                                   (const double**)wrow);
            else
                propagate_rows_f32(J, (const float*)src, (float*)dst, r0, r1, soff,
                                   (const float**)wrow);
        }
        /* every row of this step must be written before any thread reads it as a neighbour */
        if (J->nthreads > 1) barrier_wait(&J->barrier);
    }
    free(soff);
    free(wrow);
    return failed ? (void*)1 : NULL;
}

/* Run body on up to J->nthreads threads (the caller is one of them); 0 on success. A thread
   that cannot be created only means fewer threads. */
static int run_threads(job_t* J, void* (*body)(job_t*)) {
    int64_t rows = J->b * J->h;
    J->nchunks = (rows + J->chunk - 1) / J->chunk;
    int n = J->nthreads < 1 ? 1 : J->nthreads;
    if (n > J->nchunks) n = (int)J->nchunks;
    if (n < 1) n = 1;
    int its = J->iterations > 0 ? J->iterations : 1;
    J->counters = (int64_t*)calloc((size_t)its, sizeof(int64_t));
    pthread_t* th = (pthread_t*)malloc(sizeof(pthread_t) * (size_t)n);
    if (!J->counters || !th) {
        free(J->counters);
        free(th);
        return 1;
    }
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go = 0;
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&cv, NULL);
    start_t start = {J, body, &mu, &cv, &go};
    int started = 0;
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&th[started], NULL, gated, &start) != 0) break;
        started++;
    }
    J->nthreads = started + 1;
    barrier_init(&J->barrier, J->nthreads);
    pthread_mutex_lock(&mu);
    go = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    int err = body(J) != NULL;
    for (int i = 0; i < started; i++) {
        void* r = NULL;
        pthread_join(th[i], &r);
        if (r) err = 1;
    }
    free(th);
    barrier_destroy(&J->barrier);
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
    free(J->counters);
    return err;
}

int par_weights(const void* img, void* out, int is_double, int64_t b, int64_t c, int64_t h,
                int64_t w, int64_t pad, int m, const int* dy, const int* dx, double eps,
                double temperature, const void* pos, double norm, int nthreads, int64_t chunk) {
    job_t J = {0};
    J.pos = pos; J.norm = norm;
    J.b = b; J.c = c; J.h = h; J.w = w; J.pad = pad; J.m = m; J.dy = dy; J.dx = dx;
    J.iterations = 1; J.nthreads = nthreads; J.chunk = chunk < 1 ? 1 : chunk;
    J.in = img; J.buf[0] = out; J.eps = eps; J.temperature = temperature;
    J.is_double = is_double;
    return run_threads(&J, logits_worker);
}

/* buf0 holds the padded input scores and buf1 is scratch of the same size; the result is in
   buf[iterations % 2]. */
int par_propagate(const void* weights, void* buf0, void* buf1, int is_double, int64_t b,
                  int64_t k, int64_t h, int64_t w, int64_t pad, int m, const int* dy, const int* dx,
                  int iterations, int nthreads, int64_t chunk) {
    job_t J = {0};
    J.b = b; J.c = k; J.h = h; J.w = w; J.pad = pad; J.m = m; J.dy = dy; J.dx = dx;
    J.iterations = iterations; J.nthreads = nthreads; J.chunk = chunk < 1 ? 1 : chunk;
    J.in = weights; J.buf[0] = buf0; J.buf[1] = buf1; J.is_double = is_double;
    return run_threads(&J, propagate_worker);
}
"""

_FLAG_SETS = (
    ["-O3", "-march=native", "-fPIC", "-shared", "-pthread"],
    ["-O3", "-fPIC", "-shared", "-pthread"],  # compilers that do not know -march=native
)

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": ctypes.CDLL | None once tried, "error": str


def _compiler() -> str | None:
    """The C compiler: ``$CC`` if set (even when it does not exist: then no kernel), else the
    first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and feature flags."""
    parts = [platform.machine(), platform.processor()]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            for line in cpuinfo.read_text().splitlines():
                if line.startswith(("flags", "Features", "model name")):
                    parts.append(line)
                if len(parts) > 5:
                    break
        except OSError:
            pass
    return "\n".join(parts)


def _kernel_dirs() -> list[Path]:
    """Where built libraries live: the ssrseg cache, else (read-only home) a per-user folder
    in the temporary directory."""
    user = getattr(os, "getuid", lambda: "user")()
    return [cache_dir() / "kernels", Path(tempfile.gettempdir()) / f"ssrseg-kernels-{user}"]


def _build(compiler: str) -> Path:
    """Compile the source into the cache (atomically) and return the library's path."""
    errors = []
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([_SOURCE, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        name = f"par_kernels_{key}{suffix}"
        for folder in _kernel_dirs():
            target = folder / name
            if target.is_file():
                return target
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    src = Path(tmp) / "par_kernels.c"
                    src.write_text(_SOURCE)
                    out = Path(tmp) / name
                    proc = subprocess.run(
                        [compiler, *flags, "-o", str(out), str(src), "-lm"],
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    if proc.returncode == 0 and out.is_file():
                        os.replace(out, target)  # atomic: concurrent builders race harmlessly
                        return target
            except OSError as exc:  # folder not writable: try the next one
                errors.append(f"{folder}: {exc}")
                continue
            errors.append(f"{' '.join(flags)}: {proc.stderr.strip()[-500:]}")
            break  # the compiler refused these flags: another folder will not help
    raise RuntimeError("; ".join(errors))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp, ip = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
    ci, cd = ctypes.c_int, ctypes.c_double
    lib.par_weights.argtypes = [
        vp, vp, ci, i64, i64, i64, i64, i64, ci, ip, ip, cd, cd, vp, cd, ci, i64,
    ]  # fmt: skip
    lib.par_weights.restype = ci
    lib.par_propagate.argtypes = [vp, vp, vp, ci, i64, i64, i64, i64, i64, ci, ip, ip, ci, ci, i64]
    lib.par_propagate.restype = ci
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None when unavailable (see module
    docstring). A failed build warns once per process and is not retried."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C compiler found (set CC or install gcc)")
            lib = _bind(ctypes.CDLL(str(_build(compiler))))
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            _state["error"] = str(exc)
            warnings.warn(
                f"PAR: compiled CPU kernels unavailable, using the torch form ({exc}); set "
                f"{ENV_SWITCH}=0 to silence this",
                RuntimeWarning,
                stacklevel=3,
            )
        _state["lib"] = lib
        return lib


def reset() -> None:
    """Forget the loaded kernels (tests: rebuild under another environment)."""
    with _lock:
        _state.clear()


def supported(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: CPU, one dtype of float32 / float64, no
    autograd graph to record."""
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def _offset_arrays(offsets: list[tuple[int, int]]) -> tuple[ctypes.Array, ctypes.Array]:
    n = len(offsets)
    dy = (ctypes.c_int * n)(*[o[0] for o in offsets])
    dx = (ctypes.c_int * n)(*[o[1] for o in offsets])
    return dy, dx


def _threads_and_chunk(rows: int, row_work: int, threads: int | None) -> tuple[int, int]:
    """Thread count (torch's intra-op setting unless given) and rows per chunk: about 8 chunks
    per thread so that a thread that loses its core hands its share to the others; one thread
    when the whole job is too small to be worth a thread start (~50 us)."""
    n = torch.get_num_threads() if threads is None else threads
    if rows * row_work < 200_000:
        n = 1
    chunk = max(1, rows // (8 * max(1, n)))
    return max(1, n), chunk


def weights(
    lib: ctypes.CDLL,
    images: torch.Tensor,
    offsets: list[tuple[int, int]],
    eps: float,
    temperature: float,
    position: torch.Tensor,
    norm: float | None,
    threads: int | None = None,
) -> torch.Tensor:
    """PAR's neighbour weights (``par.par_weights``): ``B x C x H x W`` images ->
    ``B x M x H x W``: softmax over the neighbours of the colour logits, plus ``position``
    (M values, the position weight already applied), divided by ``norm`` when given."""
    b, c, h, w = images.shape
    pad = max(abs(dx) for _, dx in offsets)
    img = F.pad(images, (pad, pad, 0, 0), mode="replicate").contiguous()
    m = len(offsets)
    pos = position.to(device=img.device, dtype=img.dtype).contiguous()
    if pos.shape != (m,):
        raise ValueError(f"position term has shape {tuple(pos.shape)}, expected ({m},)")
    out = img.new_empty(b, m, h, w)
    dy, dx = _offset_arrays(offsets)
    n, chunk = _threads_and_chunk(b * h, 3 * m * c * w, threads)
    err = lib.par_weights(
        img.data_ptr(), out.data_ptr(), int(img.dtype == torch.float64),
        b, c, h, w, pad, m, dy, dx, eps, temperature, pos.data_ptr(), norm or 0.0, n, chunk,
    )  # fmt: skip
    if err:
        raise MemoryError("PAR kernel: out of memory")
    return out


def propagate(
    lib: ctypes.CDLL,
    scores: torch.Tensor,
    weights: torch.Tensor,
    offsets: list[tuple[int, int]],
    iterations: int,
    threads: int | None = None,
) -> torch.Tensor:
    """``iterations`` PAR steps: ``B x K x H x W`` scores, ``B x M x H x W`` weights (same
    dtype) -> ``B x K x H x W`` new tensor."""
    wts = weights.contiguous()
    b, k, h, w = scores.shape
    pad = max(abs(dx) for _, dx in offsets)
    # replicate padding of the columns: a new tensor (the input is never written)
    first = F.pad(scores, (pad, pad, 0, 0), mode="replicate").contiguous()
    m = len(offsets)
    second = torch.empty_like(first)
    dy, dx = _offset_arrays(offsets)
    n, chunk = _threads_and_chunk(b * h, m * k * w * iterations, threads)
    err = lib.par_propagate(
        wts.data_ptr(), first.data_ptr(), second.data_ptr(), int(first.dtype == torch.float64),
        b, k, h, w, pad, m, dy, dx, iterations, n, chunk,
    )  # fmt: skip
    if err:
        raise MemoryError("PAR kernel: out of memory")
    return (first if iterations % 2 == 0 else second)[..., pad : pad + w].contiguous()
