/* Native CPU kernels of the fast engine (loaded by splat/native.py through ctypes).
 *
 * Each function is one loop (or two) over float32 arrays that PyTorch would run as
 * a dozen separate operations, each a pass over memory plus a dispatch. The math
 * is that of the PyTorch functions named in each comment, which stay the
 * reference (tests compare both) and the path on other devices.
 *
 * Arrays are C-contiguous float32 (some also bfloat16, as uint16, where a flag says);
 * sizes are int64. No allocation and no state: the caller owns every buffer, scratch
 * included. Loops over atoms (or cells) run on OpenMP threads where the library is
 * built with it, on PyTorch's own OpenMP runtime (see splat/native.py).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static inline int64_t thread_index(void) { return omp_get_thread_num(); }
static inline int64_t thread_count(void) { return omp_get_num_threads(); }
int64_t max_threads(void) { return omp_get_max_threads(); }
#else
static inline int64_t thread_index(void) { return 0; }
static inline int64_t thread_count(void) { return 1; }
int64_t max_threads(void) { return 1; }
#endif

/* This thread's share [lo, hi) of n items in a parallel region (contiguous blocks of 64). */
static inline void thread_range(int64_t n, int64_t *lo, int64_t *hi) {
    const int64_t blocks = (n + 63) / 64, count = thread_count(), index = thread_index();
    const int64_t first = blocks * index / count, last = blocks * (index + 1) / count;
    *lo = first * 64 < n ? first * 64 : n;
    *hi = last * 64 < n ? last * 64 : n;
}

/* For loops specialised by literal flags at each call: the copy must be inlined to see them. */
#define SPECIALISED static inline __attribute__((always_inline))

/* Powers below this are treated as zero in recursions, so that long decays never
 * reach subnormal floats (each operation on one costs ~100 cycles). */
#define TINY_POWER 1e-30

/* bfloat16: the upper half of a float32; rounded to nearest even, as PyTorch's scalar cast rounds
 * (finite values). Subnormals are kept, where PyTorch's vectorised cast flushes them to zero. */
static inline float bf16_load(const uint16_t *p, int64_t i) {
    const uint32_t bits = (uint32_t)p[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_round(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* Element i of an array that holds float32 or (bf16 != 0) bfloat16 values. */
SPECIALISED float load(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_load((const uint16_t *)p, i) : ((const float *)p)[i];
}

SPECIALISED void store(void *p, int64_t i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = bf16_round(v);
    else
        ((float *)p)[i] = v;
}

/* A row of float32 sums into out's precision. */
SPECIALISED void store_row(const float *sums, int64_t n, void *out, const int bf16) {
#pragma omp simd
    for (int64_t b = 0; b < n; b++) store(out, b, sums[b], bf16);
}

/* One resolution of splat.loss._SpectralDistance: returns
 *     ||X - Y|| / norm + mean |log Y - 0.5 log max(P + b N, floor)|,
 * X = sqrt(max(P + a N, floor)), and writes dL/dP and dL/dN times grad_scale.
 *
 * power, noise and the two gradients are float32, or bfloat16 if bf16 != 0; noise may be
 * NULL (N = 0), and so may grad_noise then. The float32 scratch arrays (n each) hold the
 * per-cell parts of the gradient until the norm is known; with scratch_sc NULL only the
 * value is computed. In float32 the gradients may be the scratch arrays themselves.
 *
 * Each thread runs its share of the cells through an inline loop whose flags are literal
 * constants at the call, so that every combination gets its own vectorised copy (inside an
 * OpenMP region a flag passed as a variable is no longer a constant, and the loop with a
 * choice of load in it does not vectorise). */
SPECIALISED void distance_cells(const void *power, const void *noise, const float *restrict mag,
                                  const float *restrict logmag, int64_t lo, int64_t hi, float inv_n,
                                  float floor_power, float a, float b, float *restrict scratch_sc,
                                  float *restrict scratch_log, double *sums, const int has_noise,
                                  const int with_grad, const int bf16) {
    double sum_sq = 0.0, sum_abs = 0.0;
#pragma omp simd reduction(+ : sum_sq, sum_abs)
    for (int64_t i = lo; i < hi; i++) {
        const float p = load(power, i, bf16), z = has_noise ? load(noise, i, bf16) : 0.0f;
        const float sc = p + a * z, lp = p + b * z;
        const float model = sqrtf(fmaxf(sc, floor_power));
        const float diff = model - mag[i];
        const float lm = fmaxf(lp, floor_power);
        const float err = logmag[i] - 0.5f * logf(lm);
        sum_sq += (double)(diff * diff);
        sum_abs += (double)fabsf(err);
        if (with_grad) {
            const float sign = (float)((err > 0.0f) - (err < 0.0f));
            scratch_sc[i] = sc > floor_power ? diff / model : 0.0f;
            scratch_log[i] = lp > floor_power ? -0.5f * sign * inv_n / lm : 0.0f;
        }
    }
    sums[0] = sum_sq, sums[1] = sum_abs;
}

/* The gradients from the scratch: dL/dP = s sc + t log, dL/dN = a s sc + b t log. */
SPECIALISED void distance_gradients(const float *scratch_sc, const float *scratch_log, int64_t lo, int64_t hi,
                                      float s, float t, float a, float b, void *grad_power, void *grad_noise,
                                      const int has_noise, const int bf16) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        const float g_sc = s * scratch_sc[i], g_log = t * scratch_log[i];
        if (has_noise) store(grad_noise, i, a * g_sc + b * g_log, bf16);
        store(grad_power, i, g_sc + g_log, bf16);
    }
}

double spectral_distance(const void *power, const void *noise, const float *mag, const float *logmag, float norm,
                         int64_t n, float floor_power, float a, float b, float grad_scale, float *scratch_sc,
                         float *scratch_log, void *grad_power, void *grad_noise, int bf16) {
    const int with_grad = scratch_sc != 0;
    const float inv_n = 1.0f / (float)n;
    double sum_sq = 0.0, sum_abs = 0.0;
#pragma omp parallel reduction(+ : sum_sq, sum_abs)
    {
        int64_t lo, hi;
        thread_range(n, &lo, &hi);
        double sums[2];
#define CELLS(has_noise, grad, half)                                                                                 \
    distance_cells(power, noise, mag, logmag, lo, hi, inv_n, floor_power, a, b, scratch_sc, scratch_log, sums,       \
                   has_noise, grad, half)
        if (noise)
            with_grad ? (bf16 ? CELLS(1, 1, 1) : CELLS(1, 1, 0)) : (bf16 ? CELLS(1, 0, 1) : CELLS(1, 0, 0));
        else
            with_grad ? (bf16 ? CELLS(0, 1, 1) : CELLS(0, 1, 0)) : (bf16 ? CELLS(0, 0, 1) : CELLS(0, 0, 0));
#undef CELLS
        sum_sq += sums[0], sum_abs += sums[1];
    }
    const double diff_norm = sqrt(sum_sq);
    if (with_grad) {
        /* dL/dX dX/dP = (X - Y) / (||X - Y|| norm) / (2 X); the scratch holds (X - Y) / X. */
        const float s = (float)(0.5 * grad_scale / (fmax(diff_norm, 1e-30) * norm));
#pragma omp parallel
        {
            int64_t lo, hi;
            thread_range(n, &lo, &hi);
#define GRADIENTS(has_noise, half)                                                                                   \
    distance_gradients(scratch_sc, scratch_log, lo, hi, s, grad_scale, a, b, grad_power, grad_noise, has_noise, half)
            if (noise)
                bf16 ? GRADIENTS(1, 1) : GRADIENTS(1, 0);
            else
                bf16 ? GRADIENTS(0, 1) : GRADIENTS(0, 0);
#undef GRADIENTS
        }
    }
    return diff_norm / norm + sum_abs / (double)n;
}

/* One resolution of splat.loss.SpectralTarget.band_distance: returns the sum over frames m and bands j of
 *     |target_log[m, j] - 0.5 log max(P + c_j N, floor)|,
 * P and N the sums of power[m, k] and noise[m, k] over the band's bins start[j] <= k < start[j + 1],
 * and with grad_power non-NULL writes to every bin of the band dL/dP = -0.5 sign(err) scale / max(...)
 * (0 where P + c_j N <= floor) and dL/dN = c_j dL/dP. Arrays of shape (frames, bins), float32 or
 * (bf16 != 0) bfloat16; noise may be NULL (N = 0), and so may grad_noise then. */
double band_distance(const void *power, const void *noise, const int64_t *start, const float *noise_median,
                     const float *target_log, int64_t frames, int64_t bins, int64_t bands, float floor_power,
                     float scale, void *grad_power, void *grad_noise, int bf16) {
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t m = 0; m < frames; m++) {
        const int64_t row = m * bins;
        for (int64_t j = 0; j < bands; j++) {
            float p = 0.0f, z = 0.0f;
            for (int64_t k = start[j]; k < start[j + 1]; k++) {
                p += load(power, row + k, bf16);
                if (noise) z += load(noise, row + k, bf16);
            }
            const float pooled = p + noise_median[j] * z, floored = fmaxf(pooled, floor_power);
            const float err = target_log[m * bands + j] - 0.5f * logf(floored);
            total += (double)fabsf(err);
            if (grad_power) {
                const float sign = (float)((err > 0.0f) - (err < 0.0f));
                const float g = pooled > floor_power ? -0.5f * sign * scale / floored : 0.0f;
                for (int64_t k = start[j]; k < start[j + 1]; k++) {
                    store(grad_power, row + k, g, bf16);
                    if (grad_noise) store(grad_noise, row + k, noise_median[j] * g, bf16);
                }
            }
        }
    }
    return total;
}

/* splat.loss.changed_error_sums: the two error sums of splat.loss.error_sums over a window, for each of
 * many candidate changes, without forming the changed spectrograms. Candidate c's powers are
 *     tonal + sum_r ft[c, f, r] st[c, r, b],    noise + sum_r fn[c, f, r] sn[c, r, b]
 * (a few atoms' frame powers times their spectra, signed: an atom added or removed), floored
 * as the distance floors them. tonal, noise, mag, logmag: (frames, bins); ft: (candidates,
 * frames, rt), st: (candidates, rt, bins), fn and sn alike with rn (at most MAX_RANK each);
 * unchanged: (frames, 2), each frame's two sums as it is, taken where a candidate's factors
 * are all 0 in that frame (before its atoms start); out: (candidates, 2). Terms whose factor
 * is 0 in a frame are skipped there. scratch: 2 n_bins floats per thread. */
#define MAX_RANK 16
void changed_error_sums(const float *tonal, const float *noise, const float *mag, const float *logmag,
                        int64_t n_frames, int64_t n_bins, int64_t n_candidates, const float *ft, const float *st,
                        int64_t rt, const float *fn, const float *sn, int64_t rn, float floor_power, float a,
                        float b, const double *unchanged, double *out, float *scratch) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t c = 0; c < n_candidates; c++) {
        /* This thread's rows of changes of the powers. */
        float *p = scratch + 2 * n_bins * thread_index(), *z = p + n_bins;
        double sum_sq = 0.0, sum_abs = 0.0;
        for (int64_t f = 0; f < n_frames; f++) {
            const float *wt = ft + (c * n_frames + f) * rt, *wn = fn + (c * n_frames + f) * rn;
            int changed = 0;
            for (int64_t r = 0; r < rt; r++) changed |= wt[r] != 0.0f;
            for (int64_t r = 0; r < rn; r++) changed |= wn[r] != 0.0f;
            if (!changed) {
                sum_sq += unchanged[2 * f], sum_abs += unchanged[2 * f + 1];
                continue;
            }
            /* The change first, then the powers: where the atoms taken out held all of a cell's
             * power, their terms cancel exactly and the remainder is the other atoms' (or 0), not
             * the rounding of the cell's sum. */
            const int64_t row = f * n_bins;
            memset(p, 0, n_bins * sizeof *p);
            memset(z, 0, n_bins * sizeof *z);
            for (int64_t r = 0; r < rt; r++) {
                const float w = wt[r], *spectrum = st + (c * rt + r) * n_bins;
                if (w == 0.0f) continue;
#pragma omp simd
                for (int64_t k = 0; k < n_bins; k++) p[k] += w * spectrum[k];
            }
            for (int64_t r = 0; r < rn; r++) {
                const float w = wn[r], *spectrum = sn + (c * rn + r) * n_bins;
                if (w == 0.0f) continue;
#pragma omp simd
                for (int64_t k = 0; k < n_bins; k++) z[k] += w * spectrum[k];
            }
            float row_sq = 0.0f, row_abs = 0.0f;
#pragma omp simd reduction(+ : row_sq, row_abs)
            for (int64_t k = 0; k < n_bins; k++) {
                const float power = tonal[row + k] + p[k], noisy = noise[row + k] + z[k];
                const float model = sqrtf(fmaxf(power + a * noisy, floor_power)), diff = model - mag[row + k];
                row_sq += diff * diff;
                row_abs += fabsf(logmag[row + k] - 0.5f * logf(fmaxf(power + b * noisy, floor_power)));
            }
            sum_sq += (double)row_sq, sum_abs += (double)row_abs;
        }
        out[2 * c] = sum_sq, out[2 * c + 1] = sum_abs;
    }
}

/* Rows advanced together in a recursion: independent chains the CPU overlaps (one row
 * at a time waits on each multiply-add's latency). */
#define LANES 16

/* splat.dsp.decayed_sum: r[t] = Q r[t - 1] + x[t] along each row, Q = exp(log_q[row]). */
void decayed_sum(const float *x, const float *log_q, int64_t rows, int64_t n, float *r) {
#pragma omp parallel for schedule(static)
    for (int64_t first = 0; first < rows; first += LANES) {
        const int64_t lanes = rows - first < LANES ? rows - first : LANES;
        double q[LANES], state[LANES];
        for (int64_t j = 0; j < lanes; j++) q[j] = exp((double)log_q[first + j]), state[j] = 0.0;
        for (int64_t t = 0; t < n; t++) {
            for (int64_t j = 0; j < lanes; j++) {
                const int64_t at = (first + j) * n + t;
                const double s = q[j] * state[j] + x[at];
                state[j] = s < TINY_POWER ? 0.0 : s;
                r[at] = (float)state[j];
            }
        }
    }
}

/* Its gradient, for g = dL/dr: dL/dx[m] = sum_{t >= m} Q^(t - m) g[t] (the same recursion
 * backwards in time) and dL/dlog_q = Q sum_m r[m - 1] dL/dx[m]. */
void decayed_sum_backward(const float *grad, const float *log_q, const float *r, int64_t rows, int64_t n,
                          float *grad_x, float *grad_log_q) {
#pragma omp parallel for schedule(static)
    for (int64_t first = 0; first < rows; first += LANES) {
        const int64_t lanes = rows - first < LANES ? rows - first : LANES;
        double q[LANES], state[LANES], dq[LANES];
        for (int64_t j = 0; j < lanes; j++) q[j] = exp((double)log_q[first + j]), state[j] = dq[j] = 0.0;
        for (int64_t t = n - 1; t >= 0; t--) {
            for (int64_t j = 0; j < lanes; j++) {
                const int64_t at = (first + j) * n + t;
                const double s = q[j] * state[j] + grad[at];
                state[j] = fabs(s) < TINY_POWER ? 0.0 : s;
                grad_x[at] = (float)state[j];
                if (t > 0) dq[j] += (double)r[at - 1] * state[j];
            }
        }
        for (int64_t j = 0; j < lanes; j++) grad_log_q[first + j] = (float)(q[j] * dq[j]);
    }
}

/* splat.spectral.Plan.frame_powers, with the rows in the last axis (so the loops run
 * along them, 16 at a time), for every resolution r: for each of `batch` grids of shape
 * (cells, rows),
 *     out[r][m, row] = sum_j kernel[r][j] p[(first[r] + m) stride[r] + j, row],
 * out[r] of shape (batch, frames[r], rows), float32 or (bf16) bfloat16, then summed in scratch
 * (rows floats per thread) and rounded. */
void frame_powers(const float *powers, int64_t batch, int64_t cells, int64_t rows, const float **kernel,
                  const int64_t *stride, const int64_t *first, const int64_t *frames, const int64_t *taps,
                  int64_t n_res, void **out, int bf16, float *scratch) {
    for (int64_t res = 0; res < n_res; res++) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t m = 0; m < frames[res]; m++) {
                const float *p = powers + b * cells * rows;
                char *o = (char *)out[res] + (b * frames[res] + m) * rows * (bf16 ? 2 : 4);
                /* Sums in float32: in place, or (for bfloat16) in this thread's scratch row, stored after. */
                float *sums = bf16 ? scratch + rows * thread_index() : (float *)o;
                for (int64_t r = 0; r < rows; r++) sums[r] = 0.0f;
                for (int64_t j = 0; j < taps[res]; j++) {
                    const float k = kernel[res][j];
                    const float *at = p + ((first[res] + m) * stride[res] + j) * rows;
#pragma omp simd
                    for (int64_t r = 0; r < rows; r++) sums[r] += k * at[r];
                }
                if (bf16) store_row(sums, rows, o, 1);
            }
        }
    }
}

/* out[r] += k g[r] for a row g of float32 or bfloat16 values. */
SPECIALISED void add_scaled(float *out, float k, const void *g, int64_t n, const int bf16) {
#pragma omp simd
    for (int64_t r = 0; r < n; r++) out[r] += k * load(g, r, bf16);
}

/* Its gradient, summed over the resolutions: each cell gathers the frames that cover it. The
 * gradients are in the frames' precision. */
void frame_powers_backward(const void **grad, int64_t batch, int64_t cells, int64_t rows, const float **kernel,
                           const int64_t *stride, const int64_t *first, const int64_t *frames,
                           const int64_t *taps, int64_t n_res, float *grad_powers, int bf16) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t c = 0; c < cells; c++) {
            float *gp = grad_powers + (b * cells + c) * rows;
            for (int64_t r = 0; r < rows; r++) gp[r] = 0.0f;
            for (int64_t res = 0; res < n_res; res++) {
                /* Frame m covers cells (first + m) stride + [0, taps). */
                const int64_t s = stride[res], origin = first[res] * s;
                int64_t lo = c - origin - taps[res] + 1, hi = c - origin;
                lo = lo <= 0 ? 0 : (lo + s - 1) / s;
                hi = hi < 0 ? -1 : hi / s;
                hi = hi < frames[res] - 1 ? hi : frames[res] - 1;
                for (int64_t m = lo; m <= hi; m++) {
                    const float k = kernel[res][c - origin - m * s];
                    const char *g = (const char *)grad[res] + (b * frames[res] + m) * rows * (bf16 ? 2 : 4);
                    if (bf16)
                        add_scaled(gp, k, g, rows, 1);
                    else
                        add_scaled(gp, k, g, rows, 0);
                }
            }
        }
    }
}

/* splat.spectral.branch_powers: the power of every atom's three branches on the grid.
 *
 * fields: (FIELDS, atoms) with atoms = segments x per_segment, in the order of the
 * FIELD_* constants below; window_s: (segments,) start of each segment's window;
 * cell_s: (cells,) grid cell centres from a window start. For atom i of segment s
 * and cell c, with u = cell_s[c] + window_s[s] - time_s[i]:
 *     noise = An e^2(u) r(u),  body = Ab R_body(u) r(u),  short = As R_short(u) r(u),
 * An = g2 (1 - mix), Ab = g2 mix (1 - share), As = g2 mix share, g2 = 10^(gain_db / 10),
 * e the burst envelope (splat.dsp.burst_envelope), R the resonance power
 * (splat.dsp.resonance_power: c1 (step rec - (step - 1) / 2 e^2), rec[c] = Q rec[c - 1] + e^2[c])
 * and r the release in power (splat.dsp.release_gain).
 * out: (segments, cells, 3 per_segment): noise branches, then bodies, then short parts.
 * saved: (4, atoms, cells): e, r, rec_body, rec_short, for the gradient. */
enum { FIELD_TIME, FIELD_ATTACK, FIELD_SPREAD, FIELD_DECAY, FIELD_SHORT_DECAY, FIELD_GAIN, FIELD_MIX,
       FIELD_SHARE, FIELD_DURATION, FIELD_RELEASE, FIELDS };

#define LN_1000 6.907755278982137
#define LN_10 2.302585092994046
#define LN_2 0.6931471805599453
#define EXP_FLOOR (-80.0f)

typedef struct {
    float shift, attack, spread, k, rate, duration;  /* u = cell_s + shift; k: the gamma shape */
    float an, ab, as, g2, mix, share, c1[2], step;
    double q[2], log_q1[2];
} Atom;

static Atom atom_constants(const float *fields, int64_t n_atoms, int64_t i, float window_s, float step,
                           float sample_rate) {
    Atom a;
    const float *f = fields + i;
#define F(name) f[(name) * n_atoms]
    a.shift = window_s - F(FIELD_TIME);
    a.attack = F(FIELD_ATTACK), a.spread = F(FIELD_SPREAD), a.duration = F(FIELD_DURATION);
    /* k = attack / theta, theta = 2 s^2 / (sqrt(a^2 + 4 s^2) + a) (splat.dsp.gamma_scale_s). */
    const float root = sqrtf(a.attack * a.attack + 4.0f * a.spread * a.spread);
    a.k = a.attack / (2.0f * a.spread * a.spread / (root + a.attack));
    a.rate = (float)(2.0 * LN_1000) / F(FIELD_RELEASE);
    a.g2 = powf(10.0f, F(FIELD_GAIN) / 10.0f), a.mix = F(FIELD_MIX), a.share = F(FIELD_SHARE);
    a.an = a.g2 * (1.0f - a.mix), a.ab = a.g2 * a.mix * (1.0f - a.share), a.as = a.g2 * a.mix * a.share;
    a.step = step;
    for (int p = 0; p < 2; p++) {
        const float decay = F(p == 0 ? FIELD_DECAY : FIELD_SHORT_DECAY);
        const float log_q1 = (float)(-2.0 * LN_1000) / (decay * sample_rate);
        a.log_q1[p] = log_q1, a.c1[p] = -expm1f(log_q1), a.q[p] = exp((double)(step * log_q1));
    }
#undef F
    return a;
}

/* The envelope's exponent L (e = exp(L) for u >= 0, else 0) and whether its gradient flows. */
static inline float envelope_log(const Atom *a, float u, int gaussian) {
    if (gaussian) {
        const float z = (u - a->attack) / a->spread;
        return -0.5f * z * z;
    }
    const float x = fmaxf(u, 1e-9f) / a->attack;
    return a->k * (logf(x) + 1.0f - x);
}

static inline float release_power(const Atom *a, float u) {
    return expf(fmaxf(-a->rate * fmaxf(u - a->duration, 0.0f), EXP_FLOOR));
}

void branch_powers(const float *fields, const float *window_s, const float *cell_s, int64_t segments,
                   int64_t per_segment, int64_t cells, float step, float sample_rate, int gaussian, float *out,
                   float *saved) {
    const int64_t n_atoms = segments * per_segment, width = 3 * per_segment;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        const int64_t s = i / per_segment, col = i % per_segment;
        const Atom a = atom_constants(fields, n_atoms, i, window_s[s], step, sample_rate);
        float *env = saved + i * cells, *rel = saved + (n_atoms + i) * cells;
        float *rec_body = saved + (2 * n_atoms + i) * cells, *rec_short = saved + (3 * n_atoms + i) * cells;
#pragma omp simd
        for (int64_t c = 0; c < cells; c++) {
            const float u = cell_s[c] + a.shift;
            env[c] = u < 0.0f ? 0.0f : expf(fmaxf(envelope_log(&a, u, gaussian), EXP_FLOOR));
            rel[c] = release_power(&a, u);
        }
        double body = 0.0, brief = 0.0;
        for (int64_t c = 0; c < cells; c++) {
            const double e2 = (double)env[c] * env[c];
            body = a.q[0] * body + e2, brief = a.q[1] * brief + e2;
            body = body < TINY_POWER ? 0.0 : body, brief = brief < TINY_POWER ? 0.0 : brief;
            rec_body[c] = (float)body, rec_short[c] = (float)brief;
        }
        const float half = 0.5f * (step - 1.0f);
        float *o = out + s * cells * width + col;
        for (int64_t c = 0; c < cells; c++) {
            const float e2 = env[c] * env[c], r = rel[c];
            o[c * width] = a.an * e2 * r;
            o[c * width + per_segment] = a.ab * a.c1[0] * (step * rec_body[c] - half * e2) * r;
            o[c * width + 2 * per_segment] = a.as * a.c1[1] * (step * rec_short[c] - half * e2) * r;
        }
    }
}

/* Its gradient: grad of shape (segments, cells, 3 per_segment) -> grad_fields (FIELDS, atoms).
 * scratch: 4 x cells floats per thread (max_threads()). */
void branch_powers_backward(const float *grad, const float *fields, const float *window_s, const float *cell_s,
                            const float *saved, int64_t segments, int64_t per_segment, int64_t cells, float step,
                            float sample_rate, int gaussian, float *grad_fields, float *scratch) {
    const int64_t n_atoms = segments * per_segment, width = 3 * per_segment;
    const float half = 0.5f * (step - 1.0f);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        float *own = scratch + 4 * cells * thread_index();
        float *to_rec_body = own, *to_rec_short = own + cells, *to_e2 = own + 2 * cells, *to_rel = own + 3 * cells;
        const int64_t s = i / per_segment, col = i % per_segment;
        const Atom a = atom_constants(fields, n_atoms, i, window_s[s], step, sample_rate);
        const float *env = saved + i * cells, *rel = saved + (n_atoms + i) * cells;
        const float *rec_body = saved + (2 * n_atoms + i) * cells, *rec_short = saved + (3 * n_atoms + i) * cells;
        const float *g = grad + s * cells * width + col;
        /* Per cell: the gradients of the three shares, of c1 and of what each power was made of. */
        float d_an = 0.0f, d_ab = 0.0f, d_as = 0.0f, d_c1_body = 0.0f, d_c1_short = 0.0f;
        for (int64_t c = 0; c < cells; c++) {
            const float gn = g[c * width], gb = g[c * width + per_segment], gs = g[c * width + 2 * per_segment];
            const float e2 = env[c] * env[c], r = rel[c];
            const float raw_body = step * rec_body[c] - half * e2, raw_short = step * rec_short[c] - half * e2;
            const float res_body = a.c1[0] * raw_body, res_short = a.c1[1] * raw_short;
            d_an += gn * e2 * r, d_ab += gb * res_body * r, d_as += gs * res_short * r;
            const float h_body = gb * a.ab * r, h_short = gs * a.as * r;  /* d / d res */
            d_c1_body += h_body * raw_body, d_c1_short += h_short * raw_short;
            to_rec_body[c] = h_body * a.c1[0] * step, to_rec_short[c] = h_short * a.c1[1] * step;
            to_e2[c] = gn * a.an * r - half * (h_body * a.c1[0] + h_short * a.c1[1]);
            to_rel[c] = gn * a.an * e2 + gb * a.ab * res_body + gs * a.as * res_short;
        }
        /* The recursions backwards in time (splat.dsp._DecayedSum). */
        double body = 0.0, brief = 0.0, d_log_q_body = 0.0, d_log_q_short = 0.0;
        for (int64_t c = cells - 1; c >= 0; c--) {
            body = a.q[0] * body + to_rec_body[c], brief = a.q[1] * brief + to_rec_short[c];
            body = fabs(body) < TINY_POWER ? 0.0 : body, brief = fabs(brief) < TINY_POWER ? 0.0 : brief;
            to_e2[c] += (float)(body + brief);
            if (c > 0) d_log_q_body += rec_body[c - 1] * body, d_log_q_short += rec_short[c - 1] * brief;
        }
        /* The envelope and the release (splat.dsp._BurstEnvelope, splat.dsp.release_gain). */
        const float root = sqrtf(a.attack * a.attack + 4.0f * a.spread * a.spread);
        const float dk_da = (root + a.attack) * (root + a.attack) / (2.0f * root * a.spread * a.spread);
        float d_u = 0.0f, d_attack = 0.0f, d_spread = 0.0f, d_duration = 0.0f, d_rate = 0.0f;
#pragma omp simd reduction(+ : d_u, d_attack, d_spread, d_duration, d_rate)
        for (int64_t c = 0; c < cells; c++) {
            const float u = cell_s[c] + a.shift;
            const float e = env[c], log_e = envelope_log(&a, u, gaussian);
            const float d_log_e = (u >= 0.0f && log_e > EXP_FLOOR) ? 2.0f * e * e * to_e2[c] : 0.0f;
            if (gaussian) {
                const float dz = d_log_e * (u - a.attack) / (a.spread * a.spread);
                d_u -= dz, d_attack += dz, d_spread += dz * (u - a.attack) / a.spread;
            } else {
                const float uu = fmaxf(u, 1e-9f), x = uu / a.attack, m = logf(x) + 1.0f - x;
                d_u += d_log_e * a.k * (1.0f / uu - 1.0f / a.attack);
                d_attack += d_log_e * (dk_da * m - a.k * (1.0f - x) / a.attack);
                d_spread -= d_log_e * (a.attack / a.spread) * dk_da * m;
            }
            const float past = u - a.duration;
            const float d_r = (past > 0.0f && -a.rate * past > EXP_FLOOR) ? to_rel[c] * rel[c] : 0.0f;
            d_u -= d_r * a.rate, d_duration += d_r * a.rate, d_rate -= d_r * past;
        }
        float *gf = grad_fields + i;
#define G(name) gf[(name) * n_atoms]
        const float d_g2 = d_an * (1.0f - a.mix) + d_ab * a.mix * (1.0f - a.share) + d_as * a.mix * a.share;
        G(FIELD_TIME) = -d_u;
        G(FIELD_ATTACK) = d_attack, G(FIELD_SPREAD) = d_spread;
        G(FIELD_GAIN) = d_g2 * a.g2 * (float)(LN_10 / 10.0);
        G(FIELD_MIX) = a.g2 * (-d_an + d_ab * (1.0f - a.share) + d_as * a.share);
        G(FIELD_SHARE) = a.g2 * a.mix * (d_as - d_ab);
        G(FIELD_DURATION) = d_duration;
        G(FIELD_RELEASE) = d_rate * -a.rate / fields[FIELD_RELEASE * n_atoms + i];
        const double d_c1[2] = {d_c1_body, d_c1_short}, d_log_q[2] = {d_log_q_body, d_log_q_short};
        for (int p = 0; p < 2; p++) {
            /* c1 = -expm1(log_q1), log Q = step log_q1, log_q1 = -2 ln(1000) / (decay sr). */
            const double d_log_q1 = -d_c1[p] * exp(a.log_q1[p]) + step * a.q[p] * d_log_q[p];
            const float decay = fields[(p == 0 ? FIELD_DECAY : FIELD_SHORT_DECAY) * n_atoms + i];
            G(p == 0 ? FIELD_DECAY : FIELD_SHORT_DECAY) = (float)(d_log_q1 * -a.log_q1[p] / decay);
        }
#undef G
    }
}

/* splat.spectral.noise_spectra: each noise band's share of every bin, per resolution.
 *
 * For atom i (centre c, bandwidth w) and resolution r (bin width h_r, bins f = 0, h_r, ...):
 *     sigma_r = sqrt((w / FWHM)^2 + (kernel_sigma h_r)^2),
 *     share[f] = exp(-((f - c) / sigma_r)^2 / 2) / T_r,
 *     T_r = sigma_r sqrt(2 pi) / h_r max(I_r, 1e-6),
 *     I_r = (erf((nyquist - c) / (sqrt 2 sigma_r)) + erf(c / (sqrt 2 sigma_r))) / 2.
 * out[r]: (atoms, bins[r]), float32 or (bf16) bfloat16. */
#define SQRT_2 1.4142135623730951
#define SQRT_2PI 2.5066282746310002
#define FWHM_PER_SIGMA 2.3548200450309493
#define INV_SQRT_PI 0.5641895835477563

typedef struct {
    float sigma, inside, total;
    int clamped;
} Band;

static Band band_constants(float centre, float bandwidth, float bin_hz, float kernel_sigma, float nyquist) {
    Band b;
    const float sigma_band = bandwidth / (float)FWHM_PER_SIGMA, blur = kernel_sigma * bin_hz;
    b.sigma = sqrtf(sigma_band * sigma_band + blur * blur);
    const float scale = 1.0f / ((float)SQRT_2 * b.sigma);
    b.inside = 0.5f * (erff((nyquist - centre) * scale) + erff(centre * scale));
    b.clamped = b.inside < 1e-6f;
    b.total = b.sigma * (float)SQRT_2PI / bin_hz * (b.clamped ? 1e-6f : b.inside);
    return b;
}

/* One band's shares at one resolution, into o (float32, or bfloat16 if bf16). */
SPECIALISED void band_shares(float c, float inv_sigma, float inv_total, float h, int64_t n, void *o, const int bf16) {
#pragma omp simd
    for (int64_t f = 0; f < n; f++) {
        const float z = ((float)f * h - c) * inv_sigma;
        store(o, f, expf(fmaxf(-0.5f * z * z, EXP_FLOOR)) * inv_total, bf16);
    }
}

void noise_spectra(const float *centre_hz, const float *bandwidth_hz, int64_t n_atoms, const float *bin_hz,
                   const int64_t *n_bins, int64_t n_res, float kernel_sigma, float nyquist, void **out, int bf16) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        for (int64_t r = 0; r < n_res; r++) {
            const Band b = band_constants(centre_hz[i], bandwidth_hz[i], bin_hz[r], kernel_sigma, nyquist);
            const float inv_sigma = 1.0f / b.sigma, inv_total = 1.0f / b.total, c = centre_hz[i], h = bin_hz[r];
            void *o = (char *)out[r] + i * n_bins[r] * (bf16 ? 2 : 4);
            if (bf16)
                band_shares(c, inv_sigma, inv_total, h, n_bins[r], o, 1);
            else
                band_shares(c, inv_sigma, inv_total, h, n_bins[r], o, 0);
        }
    }
}

/* Sums over one band's bins of g s, g s z and g s z^2 (s the share, z = (f - c) / sigma). */
SPECIALISED void band_sums(const void *g, float c, float inv_sigma, float inv_total, float h, int64_t n, float *sums,
                           const int bf16) {
    float gs = 0.0f, gsz = 0.0f, gsz2 = 0.0f;
#pragma omp simd reduction(+ : gs, gsz, gsz2)
    for (int64_t f = 0; f < n; f++) {
        const float z = ((float)f * h - c) * inv_sigma;
        const float w = load(g, f, bf16) * expf(fmaxf(-0.5f * z * z, EXP_FLOOR)) * inv_total;
        gs += w, gsz += w * z, gsz2 += w * z * z;
    }
    sums[0] = gs, sums[1] = gsz, sums[2] = gsz2;
}

/* Its gradient: grads[r] of shape (atoms, bins[r]), in the outputs' precision -> grad_centre,
 * grad_bandwidth (atoms). */
void noise_spectra_backward(const void **grads, const float *centre_hz, const float *bandwidth_hz, int64_t n_atoms,
                            const float *bin_hz, const int64_t *n_bins, int64_t n_res, float kernel_sigma,
                            float nyquist, float *grad_centre, float *grad_bandwidth, int bf16) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        grad_centre[i] = grad_bandwidth[i] = 0.0f;
        for (int64_t r = 0; r < n_res; r++) {
            const float c = centre_hz[i], h = bin_hz[r];
            const Band b = band_constants(c, bandwidth_hz[i], h, kernel_sigma, nyquist);
            const float inv_sigma = 1.0f / b.sigma, inv_total = 1.0f / b.total;
            const void *g = (const char *)grads[r] + i * n_bins[r] * (bf16 ? 2 : 4);
            float sums[3];
            if (bf16)
                band_sums(g, c, inv_sigma, inv_total, h, n_bins[r], sums, 1);
            else
                band_sums(g, c, inv_sigma, inv_total, h, n_bins[r], sums, 0);
            const float gs = sums[0], gsz = sums[1], gsz2 = sums[2];
            /* share = exp(-z^2 / 2) / T: d/dc at fixed sigma and T, then through T (sigma, I). */
            const float d_total = -gs / b.total;
            float d_centre = gsz * inv_sigma, d_sigma = gsz2 * inv_sigma + d_total * b.total * inv_sigma;
            if (!b.clamped) {
                const float d_inside = d_total * b.sigma * (float)SQRT_2PI / h;
                const float scale = 1.0f / ((float)SQRT_2 * b.sigma);
                const float x1 = (nyquist - c) * scale, x2 = c * scale;
                const float e1 = (float)INV_SQRT_PI * expf(-x1 * x1), e2 = (float)INV_SQRT_PI * expf(-x2 * x2);
                d_centre += d_inside * (e2 - e1) * scale;
                d_sigma -= d_inside * (e1 * x1 + e2 * x2) * inv_sigma;
            }
            const float sigma_band = bandwidth_hz[i] / (float)FWHM_PER_SIGMA;
            grad_centre[i] += d_centre;
            grad_bandwidth[i] += d_sigma * sigma_band * inv_sigma / (float)FWHM_PER_SIGMA;
        }
    }
}

/* splat.spectral.resonance_spectra: each resonance part's share of every bin, per resolution.
 *
 * fields: (PARTIAL_FIELDS, atoms). For partial k = 1..K (K audible: below Nyquist, at most
 * n_partials) at f_k = r_k f0 sqrt(1 + B r_k^2) with formant gain g_k (splat.dsp.formant_gains)
 * and part p's weight w_pk = rho_p^(k - 1) g_k / sum_j rho_p^(j - 1) g_j (splat.dsp.partial_weights),
 * the 2 reach bins around f_k / h_r get w_pk times the Hann power kernel
 * (splat.dsp.hann_power_taps); splats off either end of the bins are dropped. r_k is the atom's
 * row of ratios: (series, n_partials), increasing along each row (splat.modes.ratio_table), row
 * modes[i] for atom i, or row 0 (a string's r_k = k) for every atom if modes is NULL.
 * out[r]: (segments, 2 per_segment, n_bins[r]): each segment's bodies, then its short parts; float32,
 * or bfloat16 (bf16), then summed in scratch (2 x scratch_bins floats per thread, scratch_bins >= every
 * n_bins[r]) and rounded. */
enum { PARTIAL_F0, PARTIAL_INHARMONICITY, PARTIAL_ROLLOFF, PARTIAL_SHORT_ROLLOFF, PARTIAL_FORMANT_HZ,
       PARTIAL_FORMANT_DB, PARTIAL_FIELDS };

#define PI_F 3.14159265358979f
#define MAX_PARTIALS 512
#define FORMANT_Z_PER_LOG2 2.3548200450309493 /* FWHM_PER_SIGMA / FORMANT_OCTAVES */
#define HANN_SHARE_SCALE (0.25f / 0.375f)    /* 1 / (4 mean(w^2)) */

typedef struct {
    int64_t n_active;
    const float *ratio; /* r_k of partial k = j + 1 at ratio[j] */
    float freq[MAX_PARTIALS], formant_exp[MAX_PARTIALS], geometric[2][MAX_PARTIALS], weight[2][MAX_PARTIALS];
    float gain[MAX_PARTIALS], total[2], boost;
} Partials;

static void partials(const float *fields, int64_t n_atoms, int64_t i, int64_t n_partials, float nyquist,
                     const float *ratios, const int64_t *modes, Partials *p) {
    const float *f = fields + i;
#define F(name) f[(name) * n_atoms]
    const float f0 = F(PARTIAL_F0), b = F(PARTIAL_INHARMONICITY);
    /* The partials whose ratio is at most the real ratio at Nyquist (splat.dsp.partial_index) minus 1e-6. */
    const float x = nyquist / f0;
    const float r_max = sqrtf(2.0f * x * x / (1.0f + sqrtf(1.0f + 4.0f * b * x * x))) - 1e-6f;
    const float *restrict ratio = ratios + (modes ? modes[i] : 0) * n_partials;
    int64_t n_active = 0;
    while (n_active < n_partials && ratio[n_active] <= r_max) n_active++;
    p->ratio = ratio, p->n_active = n_active;
    p->boost = expm1f(F(PARTIAL_FORMANT_DB) * (float)(LN_10 / 10.0));
    const float log_rho[2] = {-F(PARTIAL_ROLLOFF) * (float)(LN_10 / 10.0),
                              -F(PARTIAL_SHORT_ROLLOFF) * (float)(LN_10 / 10.0)};
    const float formant_hz = F(PARTIAL_FORMANT_HZ);
    p->total[0] = p->total[1] = 0.0f;
    for (int64_t j = 0; j < n_active; j++) {
        const float k = (float)(j + 1), r = ratio[j];
        p->freq[j] = r * f0 * sqrtf(1.0f + b * r * r);
        const float z = log2f(p->freq[j] / formant_hz) * (float)FORMANT_Z_PER_LOG2;
        p->formant_exp[j] = expf(-0.5f * z * z);
        p->gain[j] = 1.0f + p->boost * p->formant_exp[j];
        for (int part = 0; part < 2; part++) {
            p->geometric[part][j] = expf(fmaxf((k - 1.0f) * log_rho[part], EXP_FLOOR));
            p->total[part] += p->geometric[part][j] * p->gain[j];
        }
    }
    for (int part = 0; part < 2; part++) {
        const float norm = 1.0f / fmaxf(p->total[part], 1e-30f);
        for (int64_t j = 0; j < p->n_active; j++) p->weight[part][j] = p->geometric[part][j] * p->gain[j] * norm;
    }
#undef F
}

/* The Hann kernel around each partial's position f_k / h (splat.dsp._HannPowerTaps), for
 * the n partials at once so that the sines run vectorised: the first tap's bin, the
 * shared sin^2(pi d0) and, with slopes, sin(pi d0) cos(pi d0), where d0 is the offset of
 * floor(position) from the position (moved off the kernel's removable singularities). */
typedef struct {
    int64_t first[MAX_PARTIALS];
    float d0[MAX_PARTIALS], s2[MAX_PARTIALS], sc[MAX_PARTIALS];
} Taps;

static void hann_taps(const float *freq, int64_t n, float bin_hz, int64_t reach, int slopes, Taps *taps) {
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        const float pos = freq[j] / bin_hz, below = floorf(pos), frac = pos - below;
        const int near = frac < 1e-4f || frac > 1.0f - 1e-4f;
        const float d0 = near ? 5e-4f - frac : -frac, sine = sinf(PI_F * d0);
        taps->first[j] = (int64_t)below + 1 - reach;
        taps->d0[j] = d0, taps->s2[j] = sine * sine;
        if (slopes) taps->sc[j] = 0.5f * sinf(2.0f * PI_F * d0);
    }
}

/* share(d) = c s^2 / D^2, D = pi d (1 - d^2), at d = d0 + tap offset; and d share / d position. */
static inline float hann_share(const Taps *taps, int64_t j, int64_t t, int64_t reach, float *slope) {
    const float d = taps->d0[j] + (float)(t + 1 - reach), den = PI_F * d * (1.0f - d * d);
    const float s2 = taps->s2[j];
    if (slope)
        *slope = -2.0f * HANN_SHARE_SCALE * (PI_F * taps->sc[j] * den - s2 * PI_F * (1.0f - 3.0f * d * d)) /
                 (den * den * den);
    return HANN_SHARE_SCALE * s2 / (den * den);
}

/* The row of atom i's part in a (segments, 2 per_segment, bins) array. */
static inline int64_t part_row(int64_t i, int64_t per_segment, int part) {
    return (i / per_segment * 2 + part) * per_segment + i % per_segment;
}

void resonance_spectra(const float *fields, int64_t n_atoms, int64_t per_segment, int64_t n_partials,
                       float nyquist, const float *ratios, const int64_t *modes, const float *bin_hz,
                       const int64_t *n_bins, int64_t n_res, int64_t reach, void **out, int bf16, float *scratch,
                       int64_t scratch_bins) {
    const int64_t size = bf16 ? 2 : 4;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        Partials p;
        Taps taps;
        partials(fields, n_atoms, i, n_partials, nyquist, ratios, modes, &p);
        for (int64_t r = 0; r < n_res; r++) {
            char *row[2] = {(char *)out[r] + part_row(i, per_segment, 0) * n_bins[r] * size,
                            (char *)out[r] + part_row(i, per_segment, 1) * n_bins[r] * size};
            /* Sums in float32: in place, or (for bfloat16) in this thread's scratch, stored after. */
            float *own = scratch + 2 * scratch_bins * thread_index();
            float *sums[2] = {bf16 ? own : (float *)row[0], bf16 ? own + scratch_bins : (float *)row[1]};
            for (int part = 0; part < 2; part++)
                for (int64_t b = 0; b < n_bins[r]; b++) sums[part][b] = 0.0f;
            hann_taps(p.freq, p.n_active, bin_hz[r], reach, 0, &taps);
            for (int64_t j = 0; j < p.n_active; j++) {
                for (int64_t t = 0; t < 2 * reach; t++) {
                    const int64_t bin = taps.first[j] + t;
                    if (bin < 0 || bin >= n_bins[r]) continue;
                    const float share = hann_share(&taps, j, t, reach, 0);
                    sums[0][bin] += share * p.weight[0][j];
                    sums[1][bin] += share * p.weight[1][j];
                }
            }
            if (bf16)
                for (int part = 0; part < 2; part++) store_row(sums[part], n_bins[r], row[part], 1);
        }
    }
}

/* The gradient of the partials' weights and frequencies (d_weight, d_freq; d_freq is
 * overwritten) through the normalisation, the roll-offs and the formant gains to atom i's
 * fields, written into grad_fields (PARTIAL_FIELDS, atoms). */
static void partials_backward(const Partials *p, const float *fields, int64_t n_atoms, int64_t i,
                              float d_weight[2][MAX_PARTIALS], float *d_freq, float *grad_fields) {
    float d_gain[MAX_PARTIALS];
    for (int64_t j = 0; j < p->n_active; j++) d_gain[j] = 0.0f;
    const float *f = fields + i;
    float *gf = grad_fields + i;
#define F(name) f[(name) * n_atoms]
#define G(name) gf[(name) * n_atoms]
    const float f0 = F(PARTIAL_F0), b = F(PARTIAL_INHARMONICITY), formant_hz = F(PARTIAL_FORMANT_HZ);
    const float log_rho[2] = {-F(PARTIAL_ROLLOFF) * (float)(LN_10 / 10.0),
                              -F(PARTIAL_SHORT_ROLLOFF) * (float)(LN_10 / 10.0)};
    float d_log_rho[2] = {0.0f, 0.0f}, d_boost = 0.0f, d_formant_hz = 0.0f, d_f0 = 0.0f, d_b = 0.0f;
    for (int part = 0; part < 2; part++) {
        /* w_j = shaped_j / total: d shaped_j = (d w_j - sum_i d w_i w_i) / total (total > 1e-30). */
        const float total = fmaxf(p->total[part], 1e-30f);
        float mean = 0.0f;
        if (p->total[part] > 1e-30f)
            for (int64_t j = 0; j < p->n_active; j++) mean += d_weight[part][j] * p->weight[part][j];
        for (int64_t j = 0; j < p->n_active; j++) {
            const float d_shaped = (d_weight[part][j] - mean) / total;
            const float k = (float)(j + 1), geometric = p->geometric[part][j];
            d_gain[j] += d_shaped * geometric;
            if ((k - 1.0f) * log_rho[part] > EXP_FLOOR)
                d_log_rho[part] += d_shaped * p->gain[j] * geometric * (k - 1.0f);
        }
    }
    for (int64_t j = 0; j < p->n_active; j++) {
        const float r = p->ratio[j], freq = p->freq[j];
        const float z = log2f(freq / formant_hz) * (float)FORMANT_Z_PER_LOG2;
        d_boost += d_gain[j] * p->formant_exp[j];
        /* g = 1 + boost exp(-z^2 / 2), z = FORMANT_Z_PER_LOG2 log2(f / F). */
        const float d_log_ratio = -d_gain[j] * p->boost * p->formant_exp[j] * z * (float)(FORMANT_Z_PER_LOG2 / LN_2);
        d_freq[j] += d_log_ratio / freq;
        d_formant_hz -= d_log_ratio / formant_hz;
        d_f0 += d_freq[j] * freq / f0;
        d_b += d_freq[j] * freq * r * r / (2.0f * (1.0f + b * r * r));
    }
    G(PARTIAL_F0) = d_f0, G(PARTIAL_INHARMONICITY) = d_b;
    G(PARTIAL_ROLLOFF) = -d_log_rho[0] * (float)(LN_10 / 10.0);
    G(PARTIAL_SHORT_ROLLOFF) = -d_log_rho[1] * (float)(LN_10 / 10.0);
    G(PARTIAL_FORMANT_HZ) = d_formant_hz;
    G(PARTIAL_FORMANT_DB) = d_boost * (p->boost + 1.0f) * (float)(LN_10 / 10.0);
#undef F
#undef G
}

/* Its gradient: grads laid out as out, in its precision -> grad_fields (PARTIAL_FIELDS, atoms). */
void resonance_spectra_backward(const void **grads, const float *fields, int64_t n_atoms, int64_t per_segment,
                                int64_t n_partials, float nyquist, const float *ratios, const int64_t *modes,
                                const float *bin_hz, const int64_t *n_bins, int64_t n_res, int64_t reach,
                                float *grad_fields, int bf16) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        Partials p;
        Taps taps;
        float d_weight[2][MAX_PARTIALS], d_freq[MAX_PARTIALS];
        partials(fields, n_atoms, i, n_partials, nyquist, ratios, modes, &p);
        for (int64_t j = 0; j < p.n_active; j++) d_weight[0][j] = d_weight[1][j] = d_freq[j] = 0.0f;
        for (int64_t r = 0; r < n_res; r++) {
            const int64_t rows[2] = {part_row(i, per_segment, 0) * n_bins[r], part_row(i, per_segment, 1) * n_bins[r]};
            hann_taps(p.freq, p.n_active, bin_hz[r], reach, 1, &taps);
            for (int64_t j = 0; j < p.n_active; j++) {
                float d_pos = 0.0f;
                for (int64_t t = 0; t < 2 * reach; t++) {
                    const int64_t bin = taps.first[j] + t;
                    if (bin < 0 || bin >= n_bins[r]) continue;
                    float slope;
                    const float share = hann_share(&taps, j, t, reach, &slope);
                    const float g0 = load(grads[r], rows[0] + bin, bf16), g1 = load(grads[r], rows[1] + bin, bf16);
                    d_weight[0][j] += g0 * share, d_weight[1][j] += g1 * share;
                    d_pos += (g0 * p.weight[0][j] + g1 * p.weight[1][j]) * slope;
                }
                d_freq[j] += d_pos / bin_hz[r];
            }
        }
        partials_backward(&p, fields, n_atoms, i, d_weight, d_freq, grad_fields);
    }
}

/* splat.spectral.moving_resonance_power: the partials' power per frame and bin when pitches move
 * (one resolution).
 *
 * frames: (segments, n_frames, 2 per_segment), the window-weighted powers of the bodies, then of
 * the short parts; scale and sweep: (atoms, n_frames, n_nodes), each atom's frequency factor at every
 * pitch node of every frame and how far it moves during the node; node_weight: (n_nodes). At node j of
 * frame m, partial k of atom i (frequency f_k = r_k f0 sqrt(1 + B r_k^2) with r_k from its series' row
 * of ratios, modes[i] or 0 if modes is NULL, and weights w_0k, w_1k at its f0, as resonance_spectra's)
 * splats
 *     c = node_weight[j] (P_body w_0k + P_short w_1k)
 * times the Hann power kernel around p = f_k scale / bin_hz, blurred by a sweep of sigma = f_k sweep / bin_hz
 * bins (at most max_sweep, none below min_sweep; swept_shares), unless f_k scale >= nyquist or c < tiny.
 * table: scratch of (atoms, 1 + 3 n_partials) floats: each atom's count, frequencies and weights (fill_row).
 * out: (segments, n_frames, n_bins). Rows (segment, frame) run in parallel. */
static void fill_row(const Partials *p, int64_t n_partials, float *row) {
    row[0] = (float)p->n_active;
    for (int64_t j = 0; j < p->n_active; j++) {
        row[1 + j] = p->freq[j];
        row[1 + n_partials + j] = p->weight[0][j];
        row[1 + 2 * n_partials + j] = p->weight[1][j];
    }
}

/* Widest kernel a moving partial is drawn with, in taps (2 ceil(SWEEP_REACH (2 ks^2 + max_sweep^2)^(1/2))). */
#define MAX_MOVING_TAPS 128

/* The moving splats of one atom at one node: frequencies and powers of its live partials into
 * freq and power (the others get power 0); returns whether any is live. */
static int moving_partials(const float *row, int64_t n_partials, float sc, float om, float pb, float ps,
                           float nyquist, float tiny, float *freq, float *power) {
    const int64_t n = (int64_t)row[0];
    const float *f = row + 1, *w0 = row + 1 + n_partials, *w1 = row + 1 + 2 * n_partials;
    int any = 0;
    for (int64_t j = 0; j < n; j++) {
        freq[j] = f[j] * sc;
        const float c = om * (pb * w0[j] + ps * w1[j]);
        const int live = freq[j] < nyquist && c >= tiny;
        power[j] = live ? c : 0.0f;
        any |= live;
    }
    return any;
}

/* The 2 reach (<= 16) shares of partial k around its position (hann_share's), times `power`, into
 * share, and (by_pos) their derivatives by the position: one vectorised pass over the taps. */
static inline void moving_shares(const Taps *taps, int64_t k, int64_t reach, float power, float *share,
                                 float *by_pos) {
    const float d0 = taps->d0[k], s2 = taps->s2[k], sc = taps->sc[k];
#pragma omp simd
    for (int64_t t = 0; t < 2 * reach; t++) {
        const float d = d0 + (float)(t + 1 - reach), den = PI_F * d * (1.0f - d * d);
        const float inv = 1.0f / den, inv2 = inv * inv;
        share[t] = HANN_SHARE_SCALE * s2 * inv2 * power;
        if (by_pos)
            by_pos[t] = -2.0f * HANN_SHARE_SCALE * (PI_F * sc * den - s2 * PI_F * (1.0f - 3.0f * d * d)) * inv2 * inv;
    }
}

/* The shares of partial k (position pos, Hann taps in `taps`) while it sweeps sigma > 0 bins:
 *     (1 - l) hann(d) + l exp(-d^2 / 2v) / sqrt(2 pi v),  l = sigma^2 / (sigma^2 + ks^2),  v = 2 ks^2 + sigma^2,
 * (splat.spectral.swept_shares: the mixture's variance is the kernel's ks^2 plus sigma^2), over the 2 r bins
 * from floor(pos) + 1 - r, r = max(reach, ceil(SWEEP_REACH v^(1/2))), the Hann part over its own 2 reach.
 * With by_pos, also the derivatives by the position and (by_sigma) by sigma. Returns r. */
#define SWEEP_REACH 3.0f
static int64_t swept_shares(const Taps *taps, int64_t k, float pos, float sigma, int64_t reach, float ks,
                            float *share, float *by_pos, float *by_sigma) {
    float hann[16], hann_slope[16];
    moving_shares(taps, k, reach, 1.0f, hann, by_pos ? hann_slope : 0);
    const float s2 = sigma * sigma, k2 = ks * ks, l = s2 / (s2 + k2), v = 2.0f * k2 + s2;
    const float dl = 2.0f * sigma * k2 / ((s2 + k2) * (s2 + k2)), norm = 1.0f / sqrtf(2.0f * PI_F * v);
    const int64_t wide = (int64_t)ceilf(SWEEP_REACH * sqrtf(v)), r = wide > reach ? wide : reach, off = r - reach;
    const int64_t first = taps->first[k] - off;
#pragma omp simd
    for (int64_t t = 0; t < 2 * r; t++) {
        const float d = (float)(first + t) - pos, g = expf(-0.5f * d * d / v) * norm;
        const int in_hann = t >= off && t < off + 2 * reach;
        const float h = in_hann ? hann[t - off] : 0.0f;
        share[t] = (1.0f - l) * h + l * g;
        if (by_pos) {
            by_pos[t] = (1.0f - l) * (in_hann ? hann_slope[t - off] : 0.0f) + l * g * d / v;
            by_sigma[t] = (g - h) * dl + l * g * (0.5f * d * d / (v * v) - 0.5f / v) * 2.0f * sigma;
        }
    }
    return r;
}

void moving_spectra(const float *fields, const float *frames, const float *scale, const float *sweep,
                    const float *node_weight, int64_t segments, int64_t per_segment, int64_t n_partials,
                    float nyquist, const float *ratios, const int64_t *modes, int64_t n_frames, int64_t n_nodes, float bin_hz, int64_t n_bins, int64_t reach,
                    float tiny, float kernel_sigma, float max_sweep, float min_sweep, float *table, float *out) {
    const int64_t n_atoms = segments * per_segment;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_atoms; i++) {
            Partials p;
            partials(fields, n_atoms, i, n_partials, nyquist, ratios, modes, &p);
            fill_row(&p, n_partials, table + i * (1 + 3 * n_partials));
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < segments * n_frames; r++) {
            const int64_t s = r / n_frames, m = r % n_frames;
            float *o = out + r * n_bins;
            for (int64_t b = 0; b < n_bins; b++) o[b] = 0.0f;
            const float *fr = frames + r * 2 * per_segment;
            Taps taps;
            float freq[MAX_PARTIALS], power[MAX_PARTIALS], share[MAX_MOVING_TAPS];
            for (int64_t col = 0; col < per_segment; col++) {
                const int64_t i = s * per_segment + col;
                const float *row = table + i * (1 + 3 * n_partials);
                const int64_t n = (int64_t)row[0];
                for (int64_t j = 0; j < n_nodes; j++) {
                    const int64_t at = (i * n_frames + m) * n_nodes + j;
                    const float sc = scale[at], sw = sweep[at];
                    if (!moving_partials(row, n_partials, sc, node_weight[j], fr[col], fr[per_segment + col], nyquist,
                                         tiny, freq, power))
                        continue;
                    hann_taps(freq, n, bin_hz, reach, 0, &taps);
                    for (int64_t k = 0; k < n; k++) {
                        if (power[k] == 0.0f) continue;
                        const float sigma = fminf(row[1 + k] * sw / bin_hz, max_sweep);
                        int64_t first = taps.first[k], n_taps = 2 * reach;
                        if (sigma < min_sweep) {
                            moving_shares(&taps, k, reach, power[k], share, 0);
                        } else {
                            const int64_t r = swept_shares(&taps, k, freq[k] / bin_hz, sigma, reach, kernel_sigma,
                                                           share, 0, 0);
                            first -= r - reach, n_taps = 2 * r;
                            for (int64_t t = 0; t < n_taps; t++) share[t] *= power[k];
                        }
                        const int64_t lo = first < 0 ? -first : 0, hi = first + n_taps > n_bins ? n_bins - first : n_taps;
#pragma omp simd
                        for (int64_t t = lo; t < hi; t++) o[first + t] += share[t];
                    }
                }
            }
        }
    }
}

/* Its gradient: grad (segments, n_frames, n_bins) -> grad_frames (as frames), grad_scale and grad_sweep
 * (as scale) and grad_fields (PARTIAL_FIELDS, atoms). Atoms run in parallel. */
void moving_spectra_backward(const float *grad, const float *fields, const float *frames, const float *scale,
                             const float *sweep, const float *node_weight, int64_t segments, int64_t per_segment,
                             int64_t n_partials, float nyquist, const float *ratios, const int64_t *modes,
                             int64_t n_frames, int64_t n_nodes, float bin_hz,
                             int64_t n_bins, int64_t reach, float tiny, float kernel_sigma, float max_sweep, float min_sweep,
                             float *grad_frames, float *grad_scale, float *grad_sweep, float *grad_fields) {
    const int64_t n_atoms = segments * per_segment;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_atoms; i++) {
        const int64_t s = i / per_segment, col = i % per_segment;
        Partials p;
        Taps taps;
        float d_weight[2][MAX_PARTIALS], d_freq[MAX_PARTIALS], freq[MAX_PARTIALS], power[MAX_PARTIALS];
        float share[MAX_MOVING_TAPS], by_pos[MAX_MOVING_TAPS], by_sigma[MAX_MOVING_TAPS];
        float row[1 + 3 * MAX_PARTIALS];
        partials(fields, n_atoms, i, n_partials, nyquist, ratios, modes, &p);
        const int64_t n = p.n_active;
        fill_row(&p, n_partials, row);
        for (int64_t j = 0; j < n; j++) d_weight[0][j] = d_weight[1][j] = d_freq[j] = 0.0f;
        for (int64_t m = 0; m < n_frames; m++) {
            const int64_t r = s * n_frames + m;
            const float pb = frames[r * 2 * per_segment + col], ps = frames[r * 2 * per_segment + per_segment + col];
            const float *g = grad + r * n_bins;
            float d_pb = 0.0f, d_ps = 0.0f;
            for (int64_t j = 0; j < n_nodes; j++) {
                const int64_t at = (i * n_frames + m) * n_nodes + j;
                const float sc = scale[at], sw = sweep[at], om = node_weight[j];
                float d_sc = 0.0f, d_sw = 0.0f;
                if (moving_partials(row, n_partials, sc, om, pb, ps, nyquist, tiny, freq, power)) {
                    hann_taps(freq, n, bin_hz, reach, 1, &taps);
                    for (int64_t k = 0; k < n; k++) {
                        if (power[k] == 0.0f) continue;
                        const float sigma = p.freq[k] * sw / bin_hz;
                        int64_t first = taps.first[k], n_taps = 2 * reach;
                        if (sigma < min_sweep) {
                            moving_shares(&taps, k, reach, 1.0f, share, by_pos);
                            for (int64_t t = 0; t < n_taps; t++) by_sigma[t] = 0.0f;
                        } else {
                            const int64_t r = swept_shares(&taps, k, freq[k] / bin_hz, fminf(sigma, max_sweep), reach,
                                                           kernel_sigma, share, by_pos, by_sigma);
                            first -= r - reach, n_taps = 2 * r;
                        }
                        float g_share = 0.0f, g_pos = 0.0f, g_sigma = 0.0f;
                        const int64_t lo = first < 0 ? -first : 0, hi = first + n_taps > n_bins ? n_bins - first : n_taps;
#pragma omp simd reduction(+ : g_share, g_pos, g_sigma)
                        for (int64_t t = lo; t < hi; t++) {
                            const float gb = g[first + t];
                            g_share += gb * share[t], g_pos += gb * by_pos[t], g_sigma += gb * by_sigma[t];
                        }
                        d_pb += om * p.weight[0][k] * g_share, d_ps += om * p.weight[1][k] * g_share;
                        d_weight[0][k] += om * pb * g_share, d_weight[1][k] += om * ps * g_share;
                        /* p = f_k scale / bin_hz and sigma = f_k sweep / bin_hz (capped at max_sweep), per Hz of f_k. */
                        const float d_pos = power[k] * g_pos / bin_hz;
                        const float d_sigma = sigma < max_sweep ? power[k] * g_sigma / bin_hz : 0.0f;
                        d_sc += d_pos * p.freq[k], d_sw += d_sigma * p.freq[k];
                        d_freq[k] += d_pos * sc + d_sigma * sw;
                    }
                }
                grad_scale[at] = d_sc, grad_sweep[at] = d_sw;
            }
            grad_frames[r * 2 * per_segment + col] = d_pb, grad_frames[r * 2 * per_segment + per_segment + col] = d_ps;
        }
        partials_backward(&p, fields, n_atoms, i, d_weight, d_freq, grad_fields);
    }
}

/* splat.room.RoomBands.wet: the room's reverberation of a region's dry power x (frames, bins),
 * each bin with the recursions of its two bands s (arrays of shape (2, bins)):
 *     wet[m] = a x[m] + v_0[m] + v_1[m],   v_s[m + 1] = q_s v_s[m] + c_s x[m],   v_s[0] = v0_s (NULL: 0).
 * The loops run along the bins (contiguous), a block of them per thread, frame after frame.
 * If v is not NULL, it keeps every v_s[m], shape (2, frames, bins), for the gradient of q. */
#define ROOM_BLOCK 64
SPECIALISED void room_wet_block(const float *x, const float *a, const float *c, const float *q, const float *v0,
                                int64_t frames, int64_t bins, int64_t first, float *wet, float *v, int keep) {
    const int64_t n = bins - first < ROOM_BLOCK ? bins - first : ROOM_BLOCK;
    double state[2][ROOM_BLOCK];
    for (int64_t s = 0; s < 2; s++)
        for (int64_t j = 0; j < n; j++) state[s][j] = v0 ? (double)v0[s * bins + first + j] : 0.0;
    for (int64_t m = 0; m < frames; m++) {
        const int64_t row = m * bins + first;
        for (int64_t j = 0; j < n; j++) {
            const int64_t f = first + j;
            const double xv = x[row + j], v_0 = state[0][j], v_1 = state[1][j];
            if (keep) v[row + j] = (float)v_0, v[frames * bins + row + j] = (float)v_1;
            wet[row + j] = (float)(a[f] * xv + v_0 + v_1);
            const double n_0 = q[f] * v_0 + c[f] * xv, n_1 = q[bins + f] * v_1 + c[bins + f] * xv;
            state[0][j] = n_0 < TINY_POWER ? 0.0 : n_0;
            state[1][j] = n_1 < TINY_POWER ? 0.0 : n_1;
        }
    }
}

void room_wet(const float *x, const float *a, const float *c, const float *q, const float *v0, int64_t frames,
              int64_t bins, float *wet, float *v) {
#pragma omp parallel for schedule(static)
    for (int64_t first = 0; first < bins; first += ROOM_BLOCK) {
        if (v)
            room_wet_block(x, a, c, q, v0, frames, bins, first, wet, v, 1);
        else
            room_wet_block(x, a, c, q, v0, frames, bins, first, wet, v, 0);
    }
}

/* Its gradient for g = dL/dwet, with G_s[m] = dL/dv_s[m] = g[m] + q_s G_s[m + 1] (G_s[frames] = 0):
 *     dL/dx[m] = a g[m] + sum_s c_s G_s[m + 1],
 *     dL/da = sum_m g[m] x[m],  dL/dc_s = sum_m G_s[m + 1] x[m],  dL/dq_s = sum_m G_s[m + 1] v_s[m];
 * those of a, c and q only if grad_a is not NULL (then v must be kept; a held room needs neither). */
SPECIALISED void room_wet_backward_block(const float *grad, const float *x, const float *a, const float *c,
                                         const float *q, const float *v, int64_t frames, int64_t bins, int64_t first,
                                         float *grad_x, float *grad_a, float *grad_c, float *grad_q, int params) {
    const int64_t n = bins - first < ROOM_BLOCK ? bins - first : ROOM_BLOCK;
    double next[2][ROOM_BLOCK], d_a[ROOM_BLOCK], d_c[2][ROOM_BLOCK], d_q[2][ROOM_BLOCK];
    for (int64_t j = 0; j < n; j++)
        next[0][j] = next[1][j] = d_a[j] = d_c[0][j] = d_c[1][j] = d_q[0][j] = d_q[1][j] = 0.0;
    for (int64_t m = frames - 1; m >= 0; m--) {
        const int64_t row = m * bins + first;
        for (int64_t j = 0; j < n; j++) {
            const int64_t f = first + j;
            const double g = grad[row + j], xv = x[row + j];
            grad_x[row + j] = (float)(a[f] * g + c[f] * next[0][j] + c[bins + f] * next[1][j]);
            if (params) {
                d_a[j] += g * xv;
                d_c[0][j] += next[0][j] * xv, d_c[1][j] += next[1][j] * xv;
                d_q[0][j] += next[0][j] * v[row + j], d_q[1][j] += next[1][j] * v[frames * bins + row + j];
            }
            const double n_0 = g + q[f] * next[0][j], n_1 = g + q[bins + f] * next[1][j];
            next[0][j] = fabs(n_0) < TINY_POWER ? 0.0 : n_0;
            next[1][j] = fabs(n_1) < TINY_POWER ? 0.0 : n_1;
        }
    }
    if (params)
        for (int64_t j = 0; j < n; j++) {
            grad_a[first + j] = (float)d_a[j];
            for (int64_t s = 0; s < 2; s++) {
                grad_c[s * bins + first + j] = (float)d_c[s][j];
                grad_q[s * bins + first + j] = (float)d_q[s][j];
            }
        }
}

void room_wet_backward(const float *grad, const float *x, const float *a, const float *c, const float *q,
                       const float *v, int64_t frames, int64_t bins, float *grad_x, float *grad_a, float *grad_c,
                       float *grad_q) {
#pragma omp parallel for schedule(static)
    for (int64_t first = 0; first < bins; first += ROOM_BLOCK) {
        if (grad_a)
            room_wet_backward_block(grad, x, a, c, q, v, frames, bins, first, grad_x, grad_a, grad_c, grad_q, 1);
        else
            room_wet_backward_block(grad, x, a, c, q, v, frames, bins, first, grad_x, grad_a, grad_c, grad_q, 0);
    }
}
