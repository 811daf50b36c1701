/* Shared declarations of crowdphot's compiled kernels (the `_native` extension).
 *
 * Every kernel is plain C99 on contiguous buffers. Python wrappers (the modules of core/kernels) make the
 * arrays contiguous with the right dtype; the bindings check dtype, rank and sizes again so that
 * a wrong call raises instead of reading out of bounds. Parallel kernels split an index range
 * over threads (ck_parallel_for) with the GIL released.
 */
#ifndef CROWDPHOT_CK_H
#define CROWDPHOT_CK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*ck_range_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi);

/* Run fn(ctx, lo, hi) over [0, n) in chunks of `grain` on up to ck_get_threads() threads. */
void ck_parallel_for(Py_ssize_t n, Py_ssize_t grain, ck_range_fn fn, void *ctx);
int ck_get_threads(void);
void ck_set_threads(int n);
void ck_atomic_add(int64_t *target, int64_t value);

/* A checked buffer: kind 'd' float64, 'i' int64, 'b' bool (1 byte). ndim < 0: any rank. */
typedef struct {
    Py_buffer view;
    int held;
} ck_buf;

int ck_get(PyObject *obj, ck_buf *b, char kind, int writable, int ndim, const char *name);
void ck_release(ck_buf *bufs, int n);
Py_ssize_t ck_size(const ck_buf *b);
#define CK_D(b) ((double *)(b).view.buf)
#define CK_I(b) ((int64_t *)(b).view.buf)
#define CK_B(b) ((unsigned char *)(b).view.buf)
#define CK_SHAPE(b, i) ((b).view.shape[i])

/* the error raised when a size relation between arguments does not hold */
int ck_check(int ok, const char *what);

/* kernels, by module */
PyObject *ck_scatter(PyObject *self, PyObject *args);
PyObject *ck_greedy_match(PyObject *self, PyObject *args);
PyObject *ck_greedy_keep(PyObject *self, PyObject *args);
PyObject *ck_convolve_symmetric(PyObject *self, PyObject *args);
PyObject *ck_convolve_taps(PyObject *self, PyObject *args);
PyObject *ck_find_peaks(PyObject *self, PyObject *args);
PyObject *ck_circle_stamps(PyObject *self, PyObject *args);
PyObject *ck_circle_sums(PyObject *self, PyObject *args);
PyObject *ck_annulus_gather(PyObject *self, PyObject *args);
PyObject *ck_spline_points(PyObject *self, PyObject *args);
PyObject *ck_spline_stamps(PyObject *self, PyObject *args);
PyObject *ck_normal_blocks(PyObject *self, PyObject *args);
PyObject *ck_band_solve(PyObject *self, PyObject *args);
PyObject *ck_clip_rows(PyObject *self, PyObject *args);
PyObject *ck_range_stats(PyObject *self, PyObject *args);
PyObject *ck_range_mad(PyObject *self, PyObject *args);
PyObject *ck_sparse_rows(PyObject *self, PyObject *args);
PyObject *ck_range_biweight(PyObject *self, PyObject *args);
PyObject *ck_close_pairs(PyObject *self, PyObject *args);
PyObject *ck_fof_labels(PyObject *self, PyObject *args);

#endif
