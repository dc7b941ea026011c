/* rankdecay._gram: batched Gram matrices G = XᵀX of small float64 factors, one core each.
 *
 * gram(x, batch, n, k, g, transposed=False) -> bool
 *   x: address of `batch` C-contiguous float64 matrices X (n × k), back to back — or, with
 *      `transposed`, of their transposes Xᵀ (k × n) (factors stored column-major);
 *   g: address of `batch` float64 outputs G (k × k), written whole (both triangles).
 *   Returns False, writing nothing, where this build or this CPU cannot run the kernel
 *   (no AVX-512F, k not a multiple of 16); the caller then uses its BLAS.
 * congruence(a, b, batch, k, m, info) -> bool
 *   per item M = Lᵀ·A·L with B = L·Lᵀ (the Gram route's symmetric eigenproblem, spectra.py),
 *   info the failed Cholesky pivot; False under the same conditions as gram.
 *
 * Why: OpenBLAS's syrk runs a 768×64 Gram (the attention factor of GPT-2-small) at ~40 % of its
 * GEMM rate — the k = 64 panel is too thin for its packing to pay. Here each 8 × 16 tile of the
 * upper triangle of G stays in 16 AVX-512 registers while a block of RB rows of X (in L1/L2)
 * streams past: per row, two 16-wide loads, eight broadcasts, sixteen FMAs. Stored as Xᵀ, each
 * 4 × 4 tile is sixteen dot products of rows held as 8-wide partial sums. Each G[i][j] is summed
 * in one fixed order whatever the thread count, so results do not depend on it.
 * The GIL is released: callers split a batch over threads. Built with -DRD_NO_KERNEL (or not
 * for x86 with GCC/clang) the module has no kernel and every call returns False.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(RD_NO_KERNEL)
#define RD_HAVE_KERNEL 1
#define RB 128 /* rows of X per pass: 128 × k doubles stay in L2 */

typedef double v8d __attribute__((vector_size(64), aligned(8)));
#define LD(p) (*(const v8d *)(p))
#define ST(p, v) (*(v8d *)(p) = (v))
#define BC(s) ((v8d){(s), (s), (s), (s), (s), (s), (s), (s)})
#define ROW(m)                                                                                     \
  c##m##0 += BC(x[i0 + m]) * b0;                                                                   \
  c##m##1 += BC(x[i0 + m]) * b1;
#define TILE(OP)                                                                                   \
  OP(c00, g) OP(c01, g + 8) OP(c10, g + k) OP(c11, g + k + 8) OP(c20, g + 2 * k)                  \
  OP(c21, g + 2 * k + 8) OP(c30, g + 3 * k) OP(c31, g + 3 * k + 8) OP(c40, g + 4 * k)            \
  OP(c41, g + 4 * k + 8) OP(c50, g + 5 * k) OP(c51, g + 5 * k + 8) OP(c60, g + 6 * k)            \
  OP(c61, g + 6 * k + 8) OP(c70, g + 7 * k) OP(c71, g + 7 * k + 8)
#define DECLARE(c, p) v8d c = LD(p);
#define STORE(c, p) ST(p, c);

/* G (k × k) += the upper 8 × 16 tiles of X[r0:r1]ᵀ X[r0:r1] for X (n × k), k % 16 == 0. */
__attribute__((target("avx512f"))) static void gram_rows(const double *X, size_t r0, size_t r1,
                                                         size_t k, double *G) {
  for (size_t i0 = 0; i0 < k; i0 += 8) {
    for (size_t j0 = (i0 / 16) * 16; j0 < k; j0 += 16) {
      double *g = G + i0 * k + j0;
      TILE(DECLARE)
      const double *x = X + r0 * k;
      for (size_t r = r0; r < r1; r++, x += k) {
        v8d b0 = LD(x + j0), b1 = LD(x + j0 + 8);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
      }
      TILE(STORE)
    }
  }
}

#define SUM8(v) ((v)[0] + (v)[1] + (v)[2] + (v)[3] + (v)[4] + (v)[5] + (v)[6] + (v)[7])
#define DOTS(OP)                                                                                   \
  OP(0, 0) OP(0, 1) OP(0, 2) OP(0, 3) OP(1, 0) OP(1, 1) OP(1, 2) OP(1, 3) OP(2, 0) OP(2, 1)        \
  OP(2, 2) OP(2, 3) OP(3, 0) OP(3, 1) OP(3, 2) OP(3, 3)
#define DOT_ZERO(a, b) v8d d##a##b = {0};
#define DOT_FMA(a, b) d##a##b += u##a * w##b;
#define DOT_SUM(a, b) g[a * k + b] = SUM8(d##a##b);

/* G = Y·Yᵀ for Y = Xᵀ (k × n) row-major (a factor stored column-major), k % 4 == 0: each 4 × 4
 * tile of G's upper triangle is sixteen dot products of rows of Y, eight-wide partial sums in
 * registers over all n columns, added across lanes once at the end. */
__attribute__((target("avx512f"))) static void gram_cols(const double *Y, size_t n, size_t k,
                                                         double *G) {
  size_t n8 = n / 8 * 8;
  for (size_t i0 = 0; i0 < k; i0 += 4) {
    const double *y0 = Y + i0 * n, *y1 = y0 + n, *y2 = y1 + n, *y3 = y2 + n;
    for (size_t j0 = i0; j0 < k; j0 += 4) {
      const double *z0 = Y + j0 * n, *z1 = z0 + n, *z2 = z1 + n, *z3 = z2 + n;
      DOTS(DOT_ZERO)
      for (size_t c = 0; c < n8; c += 8) {
        v8d u0 = LD(y0 + c), u1 = LD(y1 + c), u2 = LD(y2 + c), u3 = LD(y3 + c);
        v8d w0 = LD(z0 + c), w1 = LD(z1 + c), w2 = LD(z2 + c), w3 = LD(z3 + c);
        DOTS(DOT_FMA)
      }
      double *g = G + i0 * k + j0;
      DOTS(DOT_SUM)
      for (size_t c = n8; c < n; c++) /* the last n % 8 columns */
        for (size_t a = 0; a < 4; a++)
          for (size_t b = 0; b < 4; b++)
            g[a * k + b] += Y[(i0 + a) * n + c] * Y[(j0 + b) * n + c];
    }
  }
}

/* G = XᵀX for X (n × k) row-major, or (`transposed`) for X stored as Xᵀ (k × n) row-major. */
static void gram_one(const double *X, size_t n, size_t k, int transposed, double *G) {
  if (transposed) {
    gram_cols(X, n, k, G);
  } else {
    memset(G, 0, k * k * sizeof(double));
    for (size_t r0 = 0; r0 < n; r0 += RB)
      gram_rows(X, r0, r0 + RB < n ? r0 + RB : n, k, G);
  }
  for (size_t i = 0; i < k; i++) /* the lower triangle from the upper */
    for (size_t j = 0; j < i; j++)
      G[i * k + j] = G[j * k + i];
}

static int kernel_runs(size_t k) {
  return k > 0 && k % 16 == 0 && __builtin_cpu_supports("avx512f");
}

/* C[i0:i0+8, c0:c0+16] = Σ_{p ≥ i0} P[i, p]·Q[p, c0:c0+16] for k × k row-major P (upper
 * triangular: P[i, p] = 0 for p < i) and Q: sixteen AVX-512 accumulators, as in gram_rows. */
__attribute__((target("avx512f"))) static void upper_tile(const double *P, const double *Q,
                                                          size_t k, size_t i0, size_t c0,
                                                          double *C) {
  v8d c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
  v8d c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0}, c60 = {0}, c61 = {0}, c70 = {0}, c71 = {0};
  const double *x = P + i0 * k; /* x[m·k + p] = P[i0 + m, p] */
  for (size_t p = i0; p < k; p++) {
    v8d b0 = LD(Q + p * k + c0), b1 = LD(Q + p * k + c0 + 8);
#define PROW(m)                                                                                    \
  c##m##0 += BC(x[m * k + p]) * b0;                                                                \
  c##m##1 += BC(x[m * k + p]) * b1;
    PROW(0) PROW(1) PROW(2) PROW(3) PROW(4) PROW(5) PROW(6) PROW(7)
#undef PROW
  }
  double *g = C + i0 * k + c0;
  TILE(STORE)
}

/* M = Lᵀ·A·L with B = L·Lᵀ (Cholesky) for symmetric A, B (k × k, k % 16 == 0); returns 0, or the
 * 1-based index of the first pivot that is not positive (B not positive definite; M = 0).
 * With U = Lᵀ (B = Uᵀ·U, row-major): right-looking Cholesky on a copy S of B (k³/6
 * multiply-adds, contiguous row updates), Z = U·A (k³/2), W = Zᵀ = A·Uᵀ, M = U·W (its upper
 * 8 × 16 tiles, ≈ k³/3; then mirrored) — U's zeros skipped, instead of two k³ GEMMs. `U`, `Z`,
 * `W` are k × k scratch (S shares W's). */
__attribute__((target("avx512f"))) static int congruence_one(const double *A, const double *B,
                                                             size_t k, double *U, double *Z,
                                                             double *W, double *M) {
  double *S = W;
  memcpy(S, B, k * k * sizeof(double));
  memset(U, 0, k * k * sizeof(double));
  for (size_t j = 0; j < k; j++) {
    double d = S[j * k + j];
    if (!(d > 0.0)) { /* also NaN: M = 0, so its eigenvalues are finite */
      memset(M, 0, k * k * sizeof(double));
      return (int)j + 1;
    }
    d = __builtin_sqrt(d);
    U[j * k + j] = d;
    for (size_t c = j + 1; c < k; c++)
      U[j * k + c] = S[j * k + c] / d;
    for (size_t i = j + 1; i < k; i++) { /* S[i, i:] −= U[j, i]·U[j, i:] */
      double u = U[j * k + i];
      for (size_t c = i; c < k; c++)
        S[i * k + c] -= u * U[j * k + c];
    }
  }
  for (size_t i0 = 0; i0 < k; i0 += 8)
    for (size_t c0 = 0; c0 < k; c0 += 16)
      upper_tile(U, A, k, i0, c0, Z);
  for (size_t i = 0; i < k; i++)
    for (size_t c = 0; c < k; c++)
      W[c * k + i] = Z[i * k + c];
  for (size_t i0 = 0; i0 < k; i0 += 8)
    for (size_t c0 = (i0 / 16) * 16; c0 < k; c0 += 16)
      upper_tile(U, W, k, i0, c0, M);
  for (size_t i = 0; i < k; i++)
    for (size_t c = 0; c < i; c++)
      M[i * k + c] = M[c * k + i];
  return 0;
}

#else
#define RD_HAVE_KERNEL 0
#endif

/* congruence(a, b, batch, k, m, info): per item, m = Lᵀ·a·L with b = L·Lᵀ, info (int32) the
 * failed pivot (0 where b is positive definite). Addresses of C-contiguous float64 stacks. */
static PyObject *congruence(PyObject *self, PyObject *args) {
  Py_ssize_t a, b, batch, k, m, info;
  (void)self;
  if (!PyArg_ParseTuple(args, "nnnnnn", &a, &b, &batch, &k, &m, &info))
    return NULL;
  if (batch < 0 || k < 0) {
    PyErr_SetString(PyExc_ValueError, "congruence: batch and k must be non-negative");
    return NULL;
  }
#if !RD_HAVE_KERNEL
  Py_RETURN_FALSE;
#else
  if (!kernel_runs((size_t)k))
    Py_RETURN_FALSE;
  double *work = PyMem_RawMalloc(3 * (size_t)k * (size_t)k * sizeof(double));
  if (work == NULL)
    return PyErr_NoMemory();
  Py_BEGIN_ALLOW_THREADS for (Py_ssize_t t = 0; t < batch; t++)((int *)info)[t] =
      congruence_one((const double *)a + t * k * k, (const double *)b + t * k * k, (size_t)k,
                     work, work + k * k, work + 2 * k * k, (double *)m + t * k * k);
  Py_END_ALLOW_THREADS PyMem_RawFree(work);
  Py_RETURN_TRUE;
#endif
}

static PyObject *gram(PyObject *self, PyObject *args) {
  Py_ssize_t x, batch, n, k, g;
  int transposed = 0;
  (void)self;
  if (!PyArg_ParseTuple(args, "nnnnn|p", &x, &batch, &n, &k, &g, &transposed))
    return NULL;
  if (batch < 0 || n < 0 || k < 0) {
    PyErr_SetString(PyExc_ValueError, "gram: batch, n and k must be non-negative");
    return NULL;
  }
#if RD_HAVE_KERNEL
  if (kernel_runs((size_t)k)) {
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t b = 0; b < batch; b++)
        gram_one((const double *)x + b * n * k, (size_t)n, (size_t)k, transposed,
                 (double *)g + b * k * k);
    Py_END_ALLOW_THREADS Py_RETURN_TRUE;
  }
#endif
  Py_RETURN_FALSE;
}

static PyObject *available(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
#if RD_HAVE_KERNEL
  if (kernel_runs(16))
    Py_RETURN_TRUE;
#endif
  Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"gram", gram, METH_VARARGS, "gram(x, batch, n, k, g, transposed=False) -> bool: G = XᵀX, see the C source."},
    {"congruence", congruence, METH_VARARGS,
     "congruence(a, b, batch, k, m, info): M = Lᵀ·A·L with B = L·Lᵀ, see the C source."},
    {"available", available, METH_NOARGS, "available() -> bool: whether this CPU runs the kernel."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gram", NULL, -1, methods,
                                    NULL,                  NULL,    NULL, NULL};

PyMODINIT_FUNC PyInit__gram(void) { return PyModule_Create(&module); }
