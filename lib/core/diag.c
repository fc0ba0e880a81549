/* Tool-side diagnostics: "prog: message" on stderr, exit codes 1 and 2. */
#include "config.h"
#include "core/core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int moe_verbosity = 1;
static const char *progname = "moe";

void moe_diag_init(const char *argv0)
{
	const char *slash;

	if (!argv0 || !*argv0)
		return;
	slash = strrchr(argv0, '/');
	progname = slash ? slash + 1 : argv0;
}

const char *moe_progname(void)
{
	return progname;
}

static void vmsg(const char *prefix, const char *fmt, va_list ap)
{
	fflush(stdout);
	fprintf(stderr, "%s: %s", progname, prefix);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void moe_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
	exit(1);
}

void moe_die_error(const struct moe_error *err)
{
	moe_die("%s", err && err->msg[0] ? err->msg : "unknown error");
}

void moe_warn(const char *fmt, ...)
{
	va_list ap;
	if (moe_verbosity < 1)
		return;
	va_start(ap, fmt);
	vmsg("warning: ", fmt, ap);
	va_end(ap);
}

void moe_info(int level, const char *fmt, ...)
{
	va_list ap;
	if (moe_verbosity < level)
		return;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
}

void moe_usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", progname);
	exit(2);
}

void moe_print_version(void)
{
	printf("%s (moe) %s\n", progname, PACKAGE_VERSION);
	moe_close_stdout();
	exit(0);
}

void moe_tool_option(int c, void (*usage)(FILE *fp))
{
	switch (c) {
	case 'q':
		moe_verbosity = 0;
		return;
	case 'v':
		moe_verbosity++;
		return;
	case 'h':
		usage(stdout);
		moe_close_stdout();
		exit(0);
	case 'V':
		moe_print_version();
	default:
		fprintf(stderr, "Try '%s --help' for more information.\n", progname);
		exit(2);
	}
}

void moe_close_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		if (errno == EPIPE)
			exit(1);
		fprintf(stderr, "%s: write error on standard output: %s\n", progname,
			strerror(errno));
		exit(1);
	}
}

bool moe_use_color(int fd)
{
	const char *nc = getenv("NO_COLOR");
	if (nc && *nc)
		return false;
	return isatty(fd) != 0;
}

void moe_refuse_binary_tty(FILE *fp, bool force)
{
	if (!force && isatty(fileno(fp)))
		moe_die("refusing to write binary data to a terminal (use -f to force, or redirect)");
}

double moe_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
