/* Atomic files and directories (temporary name in the same directory,
 * renamed into place), temporaries removed on error and on signals, and a
 * few filesystem helpers. */
#define _GNU_SOURCE
#include "core/core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- registry of temporaries, removed on SIGINT/SIGTERM/SIGHUP ---- */

#define MAX_TEMPS 256
static char *temps[MAX_TEMPS];
static volatile sig_atomic_t interrupted;

void moe_cleanup_register(const char *path)
{
	for (int i = 0; i < MAX_TEMPS; i++)
		if (!temps[i]) {
			temps[i] = strdup(path);
			return;
		}
}

void moe_cleanup_unregister(const char *path)
{
	for (int i = 0; i < MAX_TEMPS; i++)
		if (temps[i] && strcmp(temps[i], path) == 0) {
			char *p = temps[i];
			temps[i] = NULL;
			free(p);
			return;
		}
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	remove(path);
	return 0;
}

static void remove_all_temps(void)
{
	for (int i = 0; i < MAX_TEMPS; i++) {
		if (!temps[i])
			continue;
		struct stat st;
		if (lstat(temps[i], &st) == 0) {
			if (S_ISDIR(st.st_mode))
				nftw(temps[i], rm_cb, 16, FTW_DEPTH | FTW_PHYS);
			else
				unlink(temps[i]);
		}
	}
}

static void cleanup_handler(int sig)
{
	remove_all_temps();
	signal(sig, SIG_DFL);
	raise(sig);
}

void moe_cleanup_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = cleanup_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

static void flag_handler(int sig)
{
	(void)sig;
	interrupted = 1;
}

void moe_interrupt_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = flag_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

bool moe_interrupted(void)
{
	return interrupted != 0;
}

/* ---- helpers ---- */

char *moe_path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	bool slash = la > 0 && a[la - 1] != '/';
	char *s = malloc(la + lb + 2);
	if (!s)
		return NULL;
	memcpy(s, a, la);
	if (slash)
		s[la++] = '/';
	memcpy(s + la, b, lb + 1);
	return s;
}

/* Split path into a malloc'd directory part and a pointer to the base name. */
static char *dir_of(const char *path, const char **base)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		*base = path;
		return strdup(".");
	}
	*base = slash + 1;
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

static char *temp_name(const char *path, const char *suffix)
{
	const char *base;
	char *dir = dir_of(path, &base);
	char *t;
	if (!dir)
		return NULL;
	size_t n = strlen(dir) + strlen(base) + strlen(suffix) + 4;
	t = malloc(n);
	if (t)
		snprintf(t, n, "%s/.%s%s", dir, base, suffix);
	free(dir);
	return t;
}

int moe_atomic_open(struct moe_atomic *a, const char *path, struct moe_error *err)
{
	memset(a, 0, sizeof *a);
	a->fd = -1;
	a->path = strdup(path);
	a->tmp_path = temp_name(path, ".XXXXXX");
	if (!a->path || !a->tmp_path) {
		moe_atomic_abort(a);
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
	}
	a->fd = mkstemp(a->tmp_path);
	if (a->fd < 0) {
		moe_error_errno(err, "cannot create '%s'", path);
		free(a->tmp_path);
		a->tmp_path = NULL;
		moe_atomic_abort(a);
		return MOE_EIO;
	}
	{
		mode_t mask = umask(0);
		umask(mask);
		fchmod(a->fd, 0666 & ~mask);
	}
	moe_cleanup_register(a->tmp_path);
	a->fp = fdopen(a->fd, "wb");
	if (!a->fp) {
		moe_error_errno(err, "cannot open '%s'", a->tmp_path);
		moe_atomic_abort(a);
		return MOE_EIO;
	}
	return 0;
}

int moe_atomic_commit(struct moe_atomic *a, struct moe_error *err)
{
	int rc = 0;
	if (!a->fp)
		return moe_error_set(err, MOE_EINVAL, "%s: not open", a->path ? a->path : "?");
	if (fflush(a->fp) != 0 || ferror(a->fp) || fsync(a->fd) != 0) {
		rc = moe_error_errno(err, "cannot write '%s'", a->path);
		goto out_abort;
	}
	if (fclose(a->fp) != 0) {
		a->fp = NULL;
		a->fd = -1;
		rc = moe_error_errno(err, "cannot write '%s'", a->path);
		goto out_abort;
	}
	a->fp = NULL;
	a->fd = -1;
	if (rename(a->tmp_path, a->path) != 0) {
		rc = moe_error_errno(err, "cannot rename into '%s'", a->path);
		goto out_abort;
	}
	moe_cleanup_unregister(a->tmp_path);
	free(a->tmp_path);
	a->tmp_path = NULL;
	free(a->path);
	a->path = NULL;
	return 0;
out_abort:
	moe_atomic_abort(a);
	return rc;
}

void moe_atomic_abort(struct moe_atomic *a)
{
	if (a->fp)
		fclose(a->fp);
	else if (a->fd >= 0)
		close(a->fd);
	a->fp = NULL;
	a->fd = -1;
	if (a->tmp_path) {
		unlink(a->tmp_path);
		moe_cleanup_unregister(a->tmp_path);
		free(a->tmp_path);
		a->tmp_path = NULL;
	}
	free(a->path);
	a->path = NULL;
}

int moe_atomic_write_file(const char *path, const void *buf, size_t len, struct moe_error *err)
{
	struct moe_atomic a;
	int rc = moe_atomic_open(&a, path, err);
	if (rc)
		return rc;
	if (len && fwrite(buf, 1, len, a.fp) != len) {
		rc = moe_error_errno(err, "cannot write '%s'", path);
		moe_atomic_abort(&a);
		return rc;
	}
	return moe_atomic_commit(&a, err);
}

int moe_atomic_dir_open(struct moe_atomic_dir *d, const char *path, struct moe_error *err)
{
	memset(d, 0, sizeof *d);
	d->path = strdup(path);
	d->tmp_path = temp_name(path, ".tmp.XXXXXX");
	if (!d->path || !d->tmp_path) {
		moe_atomic_dir_abort(d);
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
	}
	if (!mkdtemp(d->tmp_path)) {
		int rc = moe_error_errno(err, "cannot create a directory beside '%s'", path);
		free(d->tmp_path);
		d->tmp_path = NULL;
		moe_atomic_dir_abort(d);
		return rc;
	}
	chmod(d->tmp_path, 0755);
	moe_cleanup_register(d->tmp_path);
	return 0;
}

int moe_atomic_dir_commit(struct moe_atomic_dir *d, bool replace, struct moe_error *err)
{
	struct stat st;
	if (!d->tmp_path)
		return moe_error_set(err, MOE_EINVAL, "atomic directory not open");
	if (lstat(d->path, &st) == 0) {
		if (!replace) {
			int rc = moe_error_set(err, MOE_EIO, "'%s' already exists", d->path);
			moe_atomic_dir_abort(d);
			return rc;
		}
		/* Move the old one aside first so that the swap is short. */
		char *old = temp_name(d->path, ".old.XXXXXX");
		if (!old || !mkdtemp(old) || rmdir(old) != 0 || rename(d->path, old) != 0) {
			int rc = moe_error_errno(err, "cannot replace '%s'", d->path);
			free(old);
			moe_atomic_dir_abort(d);
			return rc;
		}
		if (rename(d->tmp_path, d->path) != 0) {
			int rc = moe_error_errno(err, "cannot rename into '%s'", d->path);
			rename(old, d->path);
			free(old);
			moe_atomic_dir_abort(d);
			return rc;
		}
		moe_rmtree(old, NULL);
		free(old);
	} else if (rename(d->tmp_path, d->path) != 0) {
		int rc = moe_error_errno(err, "cannot rename into '%s'", d->path);
		moe_atomic_dir_abort(d);
		return rc;
	}
	moe_cleanup_unregister(d->tmp_path);
	free(d->tmp_path);
	d->tmp_path = NULL;
	free(d->path);
	d->path = NULL;
	return 0;
}

void moe_atomic_dir_abort(struct moe_atomic_dir *d)
{
	if (d->tmp_path) {
		moe_rmtree(d->tmp_path, NULL);
		moe_cleanup_unregister(d->tmp_path);
		free(d->tmp_path);
		d->tmp_path = NULL;
	}
	free(d->path);
	d->path = NULL;
}

int moe_rmtree(const char *path, struct moe_error *err)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : moe_error_errno(err, "cannot remove '%s'", path);
	if (nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS) != 0 || access(path, F_OK) == 0)
		return moe_error_errno(err, "cannot remove '%s'", path);
	return 0;
}

int moe_mkdirs(const char *path, struct moe_error *err)
{
	char *p = strdup(path);
	if (!p)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(p, 0755) != 0 && errno != EEXIST) {
			int rc = moe_error_errno(err, "cannot create directory '%s'", p);
			free(p);
			return rc;
		}
		*s = '/';
	}
	if (mkdir(p, 0755) != 0 && errno != EEXIST) {
		int rc = moe_error_errno(err, "cannot create directory '%s'", p);
		free(p);
		return rc;
	}
	free(p);
	return 0;
}

int moe_read_file(const char *path, char **buf, size_t *len, struct moe_error *err)
{
	FILE *fp = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *b = NULL;
	size_t n = 0, cap = 0;

	*buf = NULL;
	if (len)
		*len = 0;
	if (!fp)
		return moe_error_errno(err, "cannot open '%s'", path);
	for (;;) {
		if (cap - n < 65536) {
			size_t ncap = cap ? cap * 2 : 65536 + 1;
			char *nb = realloc(b, ncap);
			if (!nb) {
				free(b);
				if (fp != stdin)
					fclose(fp);
				return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
			}
			b = nb;
			cap = ncap;
		}
		size_t r = fread(b + n, 1, cap - n - 1, fp);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(fp)) {
		free(b);
		if (fp != stdin)
			fclose(fp);
		return moe_error_errno(err, "cannot read '%s'", path);
	}
	if (fp != stdin)
		fclose(fp);
	b[n] = 0;
	*buf = b;
	if (len)
		*len = n;
	return 0;
}
