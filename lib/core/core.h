/*
 * libmoe core: errors, diagnostics, progress, atomic files, number parsing,
 * checksums, JSON helpers, the common binary header and safetensors.
 *
 * Conventions (STYLE.md): lib never prints and never exits.  Actions return
 * 0 or a negative MOE_E* code and fill a caller-owned struct moe_error.
 * Predicates return bool.  Constructors return NULL on failure.  The tool-side
 * helpers (moe_die, moe_warn, progress) live here too but are only called
 * from cmd/.
 */
#ifndef MOE_CORE_H
#define MOE_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* ---- errors ------------------------------------------------------------ */

enum moe_errcode {
	MOE_OK = 0,
	MOE_EIO = -1,          /* read/write/open failed (errno in message) */
	MOE_ENOMEM = -2,       /* allocation failed */
	MOE_EINVAL = -3,       /* bad argument or option value */
	MOE_EFORMAT = -4,      /* malformed input (bad magic, bad field) */
	MOE_EVERSION = -5,     /* unsupported format version */
	MOE_ECHECKSUM = -6,    /* checksum mismatch */
	MOE_ETRUNC = -7,       /* input ends early */
	MOE_ERANGE = -8,       /* number out of range */
	MOE_EUNSUPPORTED = -9, /* valid but not supported by this build */
	MOE_ENET = -10,        /* network/HTTP failure */
	MOE_EINTR = -11,       /* interrupted by a signal */
	MOE_ECUDA = -12,       /* CUDA / cuBLAS failure */
	MOE_ENOTFOUND = -13,   /* file, key or tensor not found */
};

#define MOE_ERRMSG_MAX 512

/* A caller-owned error: code plus a one-line message naming the file and the
 * offset or field.  Zero-initialise it (struct moe_error err = {0}). */
struct moe_error {
	int code;
	char msg[MOE_ERRMSG_MAX];
};

/* Fill err (if not NULL) with code and a printf-style message; returns code so
 * that callers can write `return moe_error_set(err, MOE_EFORMAT, ...)`. */
int moe_error_set(struct moe_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Prepend "prefix: " to an existing message (e.g. a file name). */
int moe_error_prefix(struct moe_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Like moe_error_set with ": strerror(errno)" appended; code MOE_EIO. */
int moe_error_errno(struct moe_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Static name of an error code ("format error", ...). */
const char *moe_strerror(int code);

/* ---- tool-side diagnostics (cmd/ only) --------------------------------- */

/* Verbosity: 0 quiet (-q), 1 normal, 2+ verbose (-v). */
extern int moe_verbosity;
/* Program name used as the prefix of every message; set once in main(). */
void moe_diag_init(const char *argv0);
const char *moe_progname(void);
/* "prog: message" to stderr, then exit(1).  Never returns. */
void moe_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* "prog: <err->msg>" then exit(1). */
void moe_die_error(const struct moe_error *err) __attribute__((noreturn));
/* "prog: warning: message" to stderr (shown unless -q). */
void moe_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "prog: message" when verbosity >= level. */
void moe_info(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Usage error: "prog: message\nTry 'prog --help' for more information." exit 2. */
void moe_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Print "prog (moe) VERSION" to stdout and exit 0. */
void moe_print_version(void) __attribute__((noreturn));
/* Flush stdout and exit 1 with a message if writing failed (call before exit 0). */
void moe_close_stdout(void);
/* The options every tool shares, for getopt's default branch: -q, -v, -h
 * (usage(stdout), exit 0) and -V; anything else is a usage error (getopt
 * has named it): "Try 'prog --help'", exit 2. */
void moe_tool_option(int c, void (*usage)(FILE *fp));
/* Their long forms, for a tool's struct option table (before the terminator). */
#define MOE_TOOL_LONGOPTS                                                    \
	{"quiet", no_argument, NULL, 'q'}, {"verbose", no_argument, NULL, 'v'}, \
	{"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}
/* true when colours may be used on fd (a terminal and NO_COLOR unset). */
bool moe_use_color(int fd);
/* Refuse binary output to a terminal unless force: dies with a message. */
void moe_refuse_binary_tty(FILE *fp, bool force);

/* ---- progress display (cmd/ only) -------------------------------------- */

struct moe_progress;
/* A progress line on stderr that is drawn only when stderr is a terminal and
 * moe_verbosity >= 1; at most ~4 redraws per second; rate and ETA when total
 * is known (0 = unknown).  unit is "B" (printed as KB/MB/GB) or a noun such
 * as "tok" or "docs".  Returns NULL on allocation failure (callers may pass
 * NULL to the other functions, which then do nothing). */
struct moe_progress *moe_progress_new(const char *label, uint64_t total, const char *unit);
void moe_progress_set_total(struct moe_progress *p, uint64_t total);
void moe_progress_update(struct moe_progress *p, uint64_t done);
void moe_progress_add(struct moe_progress *p, uint64_t delta);
/* Clears the line; when not drawing and verbosity >= 2, prints one summary. */
void moe_progress_free(struct moe_progress *p);

/* ---- time ------------------------------------------------------------------ */
double moe_now(void); /* monotonic seconds */

/* ---- atomic files ------------------------------------------------------ */

/* An output file written under a temporary name in the same directory
 * ("dir/.name.XXXXXX") and renamed into place by moe_atomic_commit().
 * The temporary is registered so that SIGINT/SIGTERM (after
 * moe_cleanup_install()) and moe_atomic_abort() remove it.  fp is a buffered
 * stream the caller writes to. */
struct moe_atomic {
	FILE *fp;
	char *path;     /* final path (owned) */
	char *tmp_path; /* temporary path (owned) */
	int fd;
};
int moe_atomic_open(struct moe_atomic *a, const char *path, struct moe_error *err);
/* fflush + fsync + fclose + rename; on failure removes the temporary. */
int moe_atomic_commit(struct moe_atomic *a, struct moe_error *err);
/* Close and remove the temporary; safe to call twice or after commit. */
void moe_atomic_abort(struct moe_atomic *a);
/* Write a whole buffer atomically. */
int moe_atomic_write_file(const char *path, const void *buf, size_t len, struct moe_error *err);

/* A directory built under a temporary name ("parent/.name.tmp.XXXXXX") and
 * renamed into place; abort removes it recursively. */
struct moe_atomic_dir {
	char *path;
	char *tmp_path;
};
int moe_atomic_dir_open(struct moe_atomic_dir *d, const char *path, struct moe_error *err);
/* Renames tmp to path; if path exists and replace is true it is removed first. */
int moe_atomic_dir_commit(struct moe_atomic_dir *d, bool replace, struct moe_error *err);
void moe_atomic_dir_abort(struct moe_atomic_dir *d);

/* Install SIGINT/SIGTERM/SIGHUP handlers that remove every registered
 * temporary and then re-raise the signal.  Tools that want to handle a signal
 * themselves (moe-train) may instead poll moe_interrupted(). */
void moe_cleanup_install(void);
/* Register/unregister extra temporaries (files or directories). */
void moe_cleanup_register(const char *path);
void moe_cleanup_unregister(const char *path);
/* Install handlers that only set a flag (for loops that stop cleanly). */
void moe_interrupt_install(void);
bool moe_interrupted(void);

/* Remove a directory tree (used for cleanup); returns 0 or MOE_EIO. */
int moe_rmtree(const char *path, struct moe_error *err);
/* mkdir -p */
int moe_mkdirs(const char *path, struct moe_error *err);
/* Read a whole file into a malloc'd buffer (NUL-terminated, not counted). */
int moe_read_file(const char *path, char **buf, size_t *len, struct moe_error *err);
/* Path join into a malloc'd string. */
char *moe_path_join(const char *a, const char *b);

/* ---- checked number parsing -------------------------------------------- */
/* Each parses the whole string (no trailing junk), checks [min, max] and on
 * failure fills err with "invalid WHAT 'S'" or "WHAT 'S' out of range". */
int moe_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out,
		  const char *what, struct moe_error *err);
int moe_parse_u64(const char *s, uint64_t max, uint64_t *out, const char *what,
		  struct moe_error *err);
int moe_parse_double(const char *s, double min, double max, double *out,
		     const char *what, struct moe_error *err);
/* Sizes with optional K/M/G/T suffix (powers of 1024) or k/m/g (1000). */
int moe_parse_size(const char *s, uint64_t *out, const char *what, struct moe_error *err);

/* ---- checksums --------------------------------------------------------- */

struct moe_sha256 {
	uint32_t h[8];
	uint64_t len;
	uint8_t buf[64];
	size_t nbuf;
	bool accel; /* x86 SHA extensions in use */
};
/* Start a hash; uses the x86 SHA extensions when the CPU has them (about 5x
 * the portable code). */
void moe_sha256_init(struct moe_sha256 *s);
/* The same, with the SHA extensions only when allow_accel (tests use false
 * to check one path against the other). */
void moe_sha256_init_ex(struct moe_sha256 *s, bool allow_accel);
/* true when this CPU has the SHA extensions. */
bool moe_sha256_accelerated(void);
void moe_sha256_update(struct moe_sha256 *s, const void *data, size_t len);
void moe_sha256_final(struct moe_sha256 *s, uint8_t out[32]);
/* hex must hold 65 bytes. */
void moe_hex(const uint8_t *bytes, size_t n, char *hex);
int moe_unhex(const char *hex, uint8_t *bytes, size_t n);
void moe_sha256_buf(const void *data, size_t len, uint8_t out[32]);
int moe_sha256_file(const char *path, uint8_t out[32], struct moe_error *err);

/* Fast 64-bit hash for format headers and payload blocks (XXH3-64, seed 0). */
uint64_t moe_hash64(const void *data, size_t len);
struct moe_hash64_state;
struct moe_hash64_state *moe_hash64_new(void);
void moe_hash64_update(struct moe_hash64_state *s, const void *data, size_t len);
uint64_t moe_hash64_digest(const struct moe_hash64_state *s);
void moe_hash64_free(struct moe_hash64_state *s);

/* ---- JSON (jansson) ---------------------------------------------------- */
/* Load a JSON file; errors name the file, line and column. Caller json_decref. */
json_t *moe_json_load_file(const char *path, struct moe_error *err);
/* Typed getters: return 0, MOE_ENOTFOUND when the key is absent (out left
 * untouched, no error set unless required), or MOE_EFORMAT for a wrong type;
 * messages name `where` (e.g. the file) and the key. */
int moe_json_get_int(const json_t *obj, const char *key, bool required, int64_t *out,
		     const char *where, struct moe_error *err);
int moe_json_get_double(const json_t *obj, const char *key, bool required, double *out,
			const char *where, struct moe_error *err);
int moe_json_get_bool(const json_t *obj, const char *key, bool required, bool *out,
		      const char *where, struct moe_error *err);
/* *out points into obj (do not free). */
int moe_json_get_string(const json_t *obj, const char *key, bool required, const char **out,
			const char *where, struct moe_error *err);
/* Write a JSON value atomically to path, pretty-printed with 2-space indent. */
int moe_json_save_file(const json_t *v, const char *path, struct moe_error *err);

/* ---- the common binary header ------------------------------------------ */
/*
 * Every binary format starts with this 40-byte common part, followed by
 * format-specific fields, followed by an 8-byte checksum of everything before
 * it; header_size covers all of it and is a multiple of 8.
 *
 *   0  u8[8]  magic            e.g. "MOETOKS\0"
 *   8  u32    version
 *  12  u32    header_size      bytes, including the trailing checksum
 *  16  u64    payload_size     bytes after the header; MOE_SIZE_UNKNOWN when streamed
 *  24  u64    payload_hash     XXH3-64 of the payload; 0 when not computed
 *  32  u64    flags            format-specific bits
 *  40  ...    format fields    (header_size - 48 bytes)
 *  hs-8 u64   header_hash      XXH3-64 of bytes [0, header_size - 8)
 *
 * All integers are little-endian.
 */
#define MOE_HEADER_COMMON 40
#define MOE_HEADER_MAX 4096
#define MOE_SIZE_UNKNOWN UINT64_MAX

struct moe_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint64_t payload_size;
	uint64_t payload_hash;
	uint64_t flags;
	uint8_t fields[MOE_HEADER_MAX - MOE_HEADER_COMMON - 8]; /* format fields */
	uint32_t fields_len;                                  /* header_size - 48 */
};
/* Serialise h into buf (capacity cap); fills header_size from fields_len,
 * computes header_hash.  Returns the number of bytes or a negative code. */
int moe_header_encode(struct moe_header *h, uint8_t *buf, size_t cap, struct moe_error *err);
/* Parse and check a header read from `where` (a file name for messages):
 * magic must equal `magic`, version must be in [1, max_version], header_size
 * sane, header_hash must match.  buf holds len bytes read so far; returns the
 * header size consumed, or MOE_ETRUNC if more bytes are needed (call again
 * with at least the returned header_size, found in h->header_size), or an
 * error. */
int moe_header_decode(struct moe_header *h, const uint8_t *buf, size_t len, const char magic[8],
		      uint32_t max_version, const char *where, struct moe_error *err);
/* Read a header from a stream (works on pipes). */
int moe_header_read(struct moe_header *h, FILE *fp, const char magic[8], uint32_t max_version,
		    const char *where, struct moe_error *err);

/* Little-endian helpers. */
static inline void moe_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void moe_put_u64(uint8_t *p, uint64_t v)
{
	moe_put_u32(p, (uint32_t)v);
	moe_put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t moe_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t moe_get_u64(const uint8_t *p)
{
	return (uint64_t)moe_get_u32(p) | (uint64_t)moe_get_u32(p + 4) << 32;
}

/* ---- safetensors ------------------------------------------------------- */
/*
 * Hugging Face safetensors: u64 little-endian header length N, N bytes of
 * JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
 * "__metadata__": {"k": "v"}}, then the data.  The reader maps the file and
 * checks every offset against the file size; tensors point into the map.
 */
enum moe_dtype { MOE_F32, MOE_F16, MOE_BF16, MOE_I32, MOE_I64, MOE_U8, MOE_I16, MOE_U16, MOE_F64, MOE_I8, MOE_U32, MOE_BOOL };
size_t moe_dtype_size(enum moe_dtype t);
const char *moe_dtype_name(enum moe_dtype t); /* "F32", ... */

#define MOE_MAX_DIMS 8
struct moe_st_tensor {
	char *name;
	enum moe_dtype dtype;
	int ndim;
	int64_t shape[MOE_MAX_DIMS];
	const void *data; /* into the mapped file */
	size_t nbytes;
};
struct moe_st_file {
	char *path;
	void *map;
	size_t map_len;
	struct moe_st_tensor *tensors;
	size_t n_tensors;
	json_t *metadata; /* "__metadata__" object or NULL */
};
/* Open and validate; returns NULL and fills err on failure. */
struct moe_st_file *moe_st_open(const char *path, struct moe_error *err);
void moe_st_close(struct moe_st_file *f);
const struct moe_st_tensor *moe_st_find(const struct moe_st_file *f, const char *name);

/* Writer: add tensors (data is copied by reference; must stay valid until
 * commit), then commit writes the file atomically. */
struct moe_st_writer;
struct moe_st_writer *moe_st_writer_new(void);
int moe_st_writer_add(struct moe_st_writer *w, const char *name, enum moe_dtype dtype, int ndim,
		      const int64_t *shape, const void *data, struct moe_error *err);
/* Metadata string pairs (both copied). */
int moe_st_writer_meta(struct moe_st_writer *w, const char *key, const char *value);
int moe_st_writer_commit(struct moe_st_writer *w, const char *path, struct moe_error *err);
void moe_st_writer_free(struct moe_st_writer *w);

/* fp32 <-> bf16 (round to nearest even). */
uint16_t moe_f32_to_bf16(float f);
float moe_bf16_to_f32(uint16_t h);
float moe_f16_to_f32(uint16_t h);

#endif
