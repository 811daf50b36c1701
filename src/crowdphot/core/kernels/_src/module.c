/* The `crowdphot.core.kernels._native` module: thread pool, buffer checks, method table. */
#include "ck.h"

#ifndef _WIN32
#include <pthread.h>
#include <unistd.h>
#endif

static int ck_threads = 1;

int ck_get_threads(void) { return ck_threads; }

void ck_set_threads(int n) { ck_threads = n < 1 ? 1 : (n > 256 ? 256 : n); }

void ck_atomic_add(int64_t *target, int64_t value)
{
#if defined(__GNUC__) || defined(__clang__)
    __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
#else
    *target += value; /* serial builds only (see ck_parallel_for) */
#endif
}

typedef struct {
    ck_range_fn fn;
    void *ctx;
    Py_ssize_t n, grain, next;
} ck_pf;

static Py_ssize_t ck_claim(ck_pf *p)
{
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED);
#else
    Py_ssize_t lo = p->next;
    p->next += p->grain;
    return lo;
#endif
}

static void *ck_worker(void *arg)
{
    ck_pf *p = (ck_pf *)arg;
    for (;;) {
        Py_ssize_t lo = ck_claim(p);
        if (lo >= p->n) break;
        Py_ssize_t hi = lo + p->grain < p->n ? lo + p->grain : p->n;
        p->fn(p->ctx, lo, hi);
    }
    return NULL;
}

void ck_parallel_for(Py_ssize_t n, Py_ssize_t grain, ck_range_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    Py_ssize_t tasks = (n + grain - 1) / grain;
    int nt = ck_threads;
    if (nt > tasks) nt = (int)tasks;
#if defined(_WIN32) || !(defined(__GNUC__) || defined(__clang__))
    nt = 1;
#endif
    if (nt <= 1) {
        fn(ctx, 0, n);
        return;
    }
    ck_pf p = {fn, ctx, n, grain, 0};
#ifndef _WIN32
    pthread_t th[256];
    int started = 0;
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&th[started], NULL, ck_worker, &p) == 0) started++;
    }
    ck_worker(&p); /* the calling thread works too; it finishes whatever others leave */
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
#endif
}

/* -- buffers ---------------------------------------------------------------------------- */
static char ck_kind_of(const Py_buffer *v)
{
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0') return '?';
    switch (f[0]) {
    case 'd': return v->itemsize == 8 ? 'd' : '?';
    case 'l': case 'q': return v->itemsize == 8 ? 'i' : '?';
    case '?': return v->itemsize == 1 ? 'b' : '?';
    default: return '?';
    }
}

int ck_get(PyObject *obj, ck_buf *b, char kind, int writable, int ndim, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    b->held = 1;
    if (ck_kind_of(&b->view) != kind) {
        PyErr_Format(PyExc_TypeError, "%s must be of dtype %s", name,
                     kind == 'd' ? "float64" : (kind == 'i' ? "int64" : "bool"));
        return -1;
    }
    if (ndim >= 0 && b->view.ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     b->view.ndim);
        return -1;
    }
    return 0;
}

void ck_release(ck_buf *bufs, int n)
{
    for (int i = 0; i < n; i++) {
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
        bufs[i].held = 0;
    }
}

Py_ssize_t ck_size(const ck_buf *b) { return b->view.len / b->view.itemsize; }

int ck_check(int ok, const char *what)
{
    if (!ok) PyErr_Format(PyExc_ValueError, "inconsistent kernel arguments: %s", what);
    return ok ? 0 : -1;
}

/* -- module ----------------------------------------------------------------------------- */
static PyObject *py_set_num_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    ck_set_threads(n);
    return PyLong_FromLong(ck_threads);
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(ck_threads);
}

static PyMethodDef ck_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "Set the kernel thread count."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "The kernel thread count."},
    {"scatter", ck_scatter, METH_VARARGS, "Add weighted stamps into an image."},
    {"greedy_match", ck_greedy_match, METH_VARARGS, "Greedy one-to-one edge acceptance."},
    {"greedy_keep", ck_greedy_keep, METH_VARARGS, "Greedy minimum-separation thinning."},
    {"convolve_symmetric", ck_convolve_symmetric, METH_VARARGS, "Mirror-symmetric convolution."},
    {"convolve_taps", ck_convolve_taps, METH_VARARGS, "Convolution by a list of taps."},
    {"find_peaks", ck_find_peaks, METH_VARARGS, "Local maxima above a threshold."},
    {"circle_stamps", ck_circle_stamps, METH_VARARGS, "Circle/annulus pixel weights."},
    {"circle_sums", ck_circle_sums, METH_VARARGS, "Circle/annulus weighted sums."},
    {"annulus_gather", ck_annulus_gather, METH_VARARGS, "Annulus pixel values."},
    {"spline_points", ck_spline_points, METH_VARARGS, "Blended bicubic spline at points."},
    {"spline_stamps", ck_spline_stamps, METH_VARARGS, "Blended bicubic spline on stamps."},
    {"normal_blocks", ck_normal_blocks, METH_VARARGS, "Normal-matrix blocks of a fit."},
    {"band_solve", ck_band_solve, METH_VARARGS, "Banded collocation solve (no pivoting)."},
    {"clip_rows", ck_clip_rows, METH_VARARGS, "Sigma clipping of sorted rows as ranges."},
    {"range_stats", ck_range_stats, METH_VARARGS, "Median, mean, std of row ranges."},
    {"range_mad", ck_range_mad, METH_VARARGS, "Median absolute deviation of row ranges."},
    {"sparse_rows", ck_sparse_rows, METH_VARARGS, "CSR rows times a dense matrix, clipped."},
    {"range_biweight", ck_range_biweight, METH_VARARGS, "Biweight location/scale of ranges."},
    {"close_pairs", ck_close_pairs, METH_VARARGS, "Point pairs within a radius (cell grid)."},
    {"fof_labels", ck_fof_labels, METH_VARARGS, "Friends-of-friends group labels."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ck_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "crowdphot's compiled kernels (built at install time; see crowdphot.core.kernels).", -1,
    ck_methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&ck_module); }
