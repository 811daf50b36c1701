/* Small serial kernels: stamp scatter (rendering), greedy matching and thinning, and the
 * normal-matrix blocks of the fitting engine. */
#include "ck.h"

/* scatter(out[ny, nx], stamps[k, sy, sx], weights[k], bkg[k], xlo[k], ylo[k]):
 * out[ylo + r, xlo + c] += weights * stamps[r, c] + bkg, pixels outside `out` dropped. */
PyObject *ck_scatter(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    ck_buf b[6] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 1, 2, "out") || ck_get(o[1], &b[1], 'd', 0, 3, "stamps")
        || ck_get(o[2], &b[2], 'd', 0, 1, "weights") || ck_get(o[3], &b[3], 'd', 0, 1, "bkg")
        || ck_get(o[4], &b[4], 'i', 0, 1, "xlo") || ck_get(o[5], &b[5], 'i', 0, 1, "ylo"))
        goto done;
    Py_ssize_t ny = CK_SHAPE(b[0], 0), nx = CK_SHAPE(b[0], 1);
    Py_ssize_t k = CK_SHAPE(b[1], 0), sy = CK_SHAPE(b[1], 1), sx = CK_SHAPE(b[1], 2);
    if (ck_check(ck_size(&b[2]) == k && ck_size(&b[3]) == k && ck_size(&b[4]) == k
                     && ck_size(&b[5]) == k, "scatter: one weight, bkg, xlo, ylo per stamp"))
        goto done;
    double *out = CK_D(b[0]), *st = CK_D(b[1]), *w = CK_D(b[2]), *bk = CK_D(b[3]);
    int64_t *xlo = CK_I(b[4]), *ylo = CK_I(b[5]);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) {
        int64_t y0 = ylo[i], x0 = xlo[i];
        int64_t r0 = y0 < 0 ? -y0 : 0, r1 = sy < ny - y0 ? sy : ny - y0;
        int64_t c0 = x0 < 0 ? -x0 : 0, c1 = sx < nx - x0 ? sx : nx - x0;
        double wi = w[i], bi = bk[i];
        for (int64_t r = r0; r < r1; r++) {
            double *row = out + (y0 + r) * nx + x0;
            const double *s = st + (i * sy + r) * sx;
            for (int64_t c = c0; c < c1; c++) row[c] += wi * s[c] + bi;
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 6);
    return ret;
}

/* greedy_match(i[m], j[m], n_ref, n_src, accept[m]): accept edge k (in order) when neither its
 * reference i[k] nor its source j[k] is taken yet. */
PyObject *ck_greedy_match(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    Py_ssize_t n_ref, n_src;
    ck_buf b[3] = {{{0}}};
    PyObject *ret = NULL;
    unsigned char *used = NULL;
    if (!PyArg_ParseTuple(args, "OOnnO", &o[0], &o[1], &n_ref, &n_src, &o[2])) return NULL;
    if (ck_get(o[0], &b[0], 'i', 0, 1, "i") || ck_get(o[1], &b[1], 'i', 0, 1, "j")
        || ck_get(o[2], &b[2], 'b', 1, 1, "accept"))
        goto done;
    Py_ssize_t m = ck_size(&b[0]);
    if (ck_check(ck_size(&b[1]) == m && ck_size(&b[2]) == m && n_ref >= 0 && n_src >= 0,
                 "greedy_match: i, j and accept of one length"))
        goto done;
    int64_t *ii = CK_I(b[0]), *jj = CK_I(b[1]);
    for (Py_ssize_t k = 0; k < m; k++) {
        if (ii[k] < 0 || ii[k] >= n_ref || jj[k] < 0 || jj[k] >= n_src) {
            ck_check(0, "greedy_match: index out of range");
            goto done;
        }
    }
    used = calloc((size_t)(n_ref + n_src + 1), 1);
    if (!used) {
        PyErr_NoMemory();
        goto done;
    }
    unsigned char *acc = CK_B(b[2]);
    for (Py_ssize_t k = 0; k < m; k++) {
        int ok = !used[ii[k]] && !used[n_ref + jj[k]];
        if (ok) used[ii[k]] = used[n_ref + jj[k]] = 1;
        acc[k] = (unsigned char)ok;
    }
    ret = Py_NewRef(Py_None);
done:
    free(used);
    ck_release(b, 3);
    return ret;
}

/* greedy_keep(first[m], second[m], keep[n]): `first` sorted ascending; a kept point drops every
 * `second` paired with it (keep starts all true). */
PyObject *ck_greedy_keep(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    ck_buf b[3] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOO", &o[0], &o[1], &o[2])) return NULL;
    if (ck_get(o[0], &b[0], 'i', 0, 1, "first") || ck_get(o[1], &b[1], 'i', 0, 1, "second")
        || ck_get(o[2], &b[2], 'b', 1, 1, "keep"))
        goto done;
    Py_ssize_t m = ck_size(&b[0]), n = ck_size(&b[2]);
    if (ck_check(ck_size(&b[1]) == m, "greedy_keep: first and second of one length")) goto done;
    int64_t *first = CK_I(b[0]), *second = CK_I(b[1]);
    for (Py_ssize_t p = 0; p < m; p++) {
        if (first[p] < 0 || first[p] >= n || second[p] < 0 || second[p] >= n
            || (p && first[p] < first[p - 1])) {
            ck_check(0, "greedy_keep: indices in range, first sorted");
            goto done;
        }
    }
    unsigned char *keep = CK_B(b[2]);
    for (Py_ssize_t i = 0; i < n; i++) keep[i] = 1;
    Py_ssize_t p = 0;
    while (p < m) {
        int64_t i = first[p];
        Py_ssize_t q = p;
        while (q < m && first[q] == i) q++;
        if (keep[i])
            for (Py_ssize_t t = p; t < q; t++) keep[second[t]] = 0;
        p = q;
    }
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 3);
    return ret;
}

/* normal_blocks(jac[npair, nk, npix], starts[nt], counts[nt], toff[nt], tb[*], out[nb, nk, nk]):
 * for each stamp t, pairs p0 = starts[t] .. p0 + counts[t]; for pairs a <= b,
 * out[tb[toff + a c + b]] += J_a J_b^T and out[tb[toff + b c + a]] += (J_a J_b^T)^T. */
PyObject *ck_normal_blocks(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    ck_buf b[6] = {{{0}}};
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5]))
        return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 3, "jac") || ck_get(o[1], &b[1], 'i', 0, 1, "starts")
        || ck_get(o[2], &b[2], 'i', 0, 1, "counts") || ck_get(o[3], &b[3], 'i', 0, 1, "toff")
        || ck_get(o[4], &b[4], 'i', 0, 1, "tb") || ck_get(o[5], &b[5], 'd', 1, 3, "out"))
        goto done;
    Py_ssize_t npair = CK_SHAPE(b[0], 0), nk = CK_SHAPE(b[0], 1), npix = CK_SHAPE(b[0], 2);
    Py_ssize_t nt = ck_size(&b[1]), ntb = ck_size(&b[4]), nb = CK_SHAPE(b[5], 0);
    if (ck_check(ck_size(&b[2]) == nt && ck_size(&b[3]) == nt && CK_SHAPE(b[5], 1) == nk
                     && CK_SHAPE(b[5], 2) == nk, "normal_blocks: shapes"))
        goto done;
    int64_t *starts = CK_I(b[1]), *counts = CK_I(b[2]), *toff = CK_I(b[3]), *tb = CK_I(b[4]);
    for (Py_ssize_t t = 0; t < nt; t++) {
        int64_t c = counts[t];
        if (starts[t] < 0 || c < 0 || starts[t] + c > npair || toff[t] < 0
            || toff[t] + c * c > ntb) {
            ck_check(0, "normal_blocks: pair or triple index out of range");
            goto done;
        }
        for (int64_t q = 0; q < c * c; q++) {
            if (tb[toff[t] + q] < 0 || tb[toff[t] + q] >= nb) {
                ck_check(0, "normal_blocks: block index out of range");
                goto done;
            }
        }
    }
    const double *jac = CK_D(b[0]);
    double *out = CK_D(b[5]);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < nt; t++) {
        int64_t p0 = starts[t], c = counts[t], off = toff[t];
        for (int64_t a = 0; a < c; a++) {
            for (int64_t bb = a; bb < c; bb++) {
                int64_t bab = tb[off + a * c + bb], bba = tb[off + bb * c + a];
                for (Py_ssize_t k = 0; k < nk; k++) {
                    const double *ja = jac + ((p0 + a) * nk + k) * npix;
                    for (Py_ssize_t m = 0; m < nk; m++) {
                        const double *jb = jac + ((p0 + bb) * nk + m) * npix;
                        double acc = 0.0;
                        for (Py_ssize_t q = 0; q < npix; q++) acc += ja[q] * jb[q];
                        out[(bab * nk + k) * nk + m] += acc;
                        if (bb != a) out[(bba * nk + m) * nk + k] += acc;
                    }
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    ck_release(b, 6);
    return ret;
}

typedef struct {
    const double *lu;
    double *x;
    Py_ssize_t n, inner, lower, upper;
} band_ctx;

/* forward and backward substitution of the factored band for x[lo..hi) */
static void band_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const band_ctx *c = ctx;
    const double *lu = c->lu;
    Py_ssize_t n = c->n, inner = c->inner, lower = c->lower, upper = c->upper;
    for (Py_ssize_t q = lo; q < hi; q++) {
        double *xo = c->x + q * n * inner;
        for (Py_ssize_t k = 0; k < n; k++) { /* forward: L y = x */
            double *xk = xo + k * inner;
            for (Py_ssize_t r = k + 1; r < n && r <= k + lower; r++) {
                double f = lu[r * n + k];
                if (f == 0.0) continue;
                double *xr = xo + r * inner;
                for (Py_ssize_t i = 0; i < inner; i++) xr[i] -= f * xk[i];
            }
        }
        for (Py_ssize_t k = n - 1; k >= 0; k--) { /* backward: U x = y */
            double *xk = xo + k * inner;
            Py_ssize_t end = k + upper + 1 < n ? k + upper + 1 : n;
            for (Py_ssize_t c2 = k + 1; c2 < end; c2++) {
                double u = lu[k * n + c2];
                const double *xc = xo + c2 * inner;
                for (Py_ssize_t i = 0; i < inner; i++) xk[i] -= u * xc[i];
            }
            double d = lu[k * n + k];
            for (Py_ssize_t i = 0; i < inner; i++) xk[i] /= d;
        }
    }
}

/* band_solve(a[n, n], x[outer, n, inner]): solve a @ x[o] = x[o] in place for every o, along
 * the middle axis (the o in parallel). `a` is banded and totally positive (a B-spline
 * collocation matrix), so Gaussian elimination without pivoting is stable (de Boor); only the
 * band is used. */
PyObject *ck_band_solve(PyObject *self, PyObject *args)
{
    PyObject *o[2];
    ck_buf b[2] = {{{0}}};
    PyObject *ret = NULL;
    double *lu = NULL;
    if (!PyArg_ParseTuple(args, "OO", &o[0], &o[1])) return NULL;
    if (ck_get(o[0], &b[0], 'd', 0, 2, "a") || ck_get(o[1], &b[1], 'd', 1, 3, "x")) goto done;
    Py_ssize_t n = CK_SHAPE(b[0], 0), outer = CK_SHAPE(b[1], 0), inner = CK_SHAPE(b[1], 2);
    if (ck_check(CK_SHAPE(b[0], 1) == n && CK_SHAPE(b[1], 1) == n, "band_solve: shapes"))
        goto done;
    const double *a = CK_D(b[0]);
    Py_ssize_t lower = 0, upper = 0;
    for (Py_ssize_t r = 0; r < n; r++)
        for (Py_ssize_t c = 0; c < n; c++)
            if (a[r * n + c] != 0.0) {
                if (r - c > lower) lower = r - c;
                if (c - r > upper) upper = c - r;
            }
    lu = malloc(sizeof(double) * (size_t)(n * n + 1));
    if (!lu) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(lu, a, sizeof(double) * (size_t)(n * n));
    for (Py_ssize_t k = 0; k < n; k++) { /* LU without pivoting, in the band */
        if (lu[k * n + k] == 0.0) {
            ck_check(0, "band_solve: singular collocation matrix");
            goto done;
        }
        Py_ssize_t end = k + upper + 1 < n ? k + upper + 1 : n;
        for (Py_ssize_t r = k + 1; r < n && r <= k + lower; r++) {
            double f = lu[r * n + k] / lu[k * n + k];
            lu[r * n + k] = f;
            for (Py_ssize_t c = k + 1; c < end; c++) lu[r * n + c] -= f * lu[k * n + c];
        }
    }
    band_ctx c = {lu, CK_D(b[1]), n, inner, lower, upper};
    Py_BEGIN_ALLOW_THREADS
    ck_parallel_for(outer, 1, band_range, &c);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    free(lu);
    ck_release(b, 2);
    return ret;
}
