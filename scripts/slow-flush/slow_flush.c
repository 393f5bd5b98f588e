/*
 * slow_flush.so: an LD_PRELOAD shim that makes every fsync(2) and
 * fdatasync(2) of the process it is loaded into take longer, to measure
 * lion's durable appends as if the disk were in its slow-flush state.
 *
 * The real call still runs first (durability is unchanged); the thread then
 * sleeps LION_SLOW_FLUSH_US microseconds more (default 3600, which brings a
 * 4 KiB write + fdatasync on these machines to about 4 ms, the slow state
 * measured in ../shared/ARCHITECTURE.md). Used by scripts/bench-slow-flush.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static long extra_us(void) {
    const char *s = getenv("LION_SLOW_FLUSH_US");
    return s ? atol(s) : 3600;
}

static void nap(void) {
    long us = extra_us();
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&t, &t) != 0) {
    }
}

/* Runs the real call named `name` (looked up once into `*real`), then naps. */
static int slowed(int (**real)(int), const char *name, int fd) {
    if (!*real) *real = (int (*)(int))dlsym(RTLD_NEXT, name);
    int r = (*real)(fd);
    nap();
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    return slowed(&real, "fsync", fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    return slowed(&real, "fdatasync", fd);
}
