/*
 * slow_flush.so: an LD_PRELOAD shim that makes every fsync(2) and
 * fdatasync(2) of the process it is loaded into take as long as a flush in
 * the disk's slow state, to measure lion's durable appends in that state
 * while the disk is in its fast one.
 *
 * The real call still runs first (durability is unchanged); if it returned
 * sooner than LION_SLOW_FLUSH_US microseconds after it was made (default
 * 4000, the top of the 3.5-4 ms slow flush measured in
 * ../shared/ARCHITECTURE.md), the thread sleeps out the rest. A flush that
 * is slower than that on its own is left as it is. Padding to a floor,
 * rather than adding a fixed delay, keeps the emulated flush at the slow
 * state's figure whatever the fast state's flush costs on the day.
 * Used by scripts/bench-slow-flush.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

/* The slow state's flush time, in nanoseconds. */
static long long floor_ns(void) {
    const char *s = getenv("LION_SLOW_FLUSH_US");
    return (s ? atoll(s) : 4000) * 1000;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Sleeps until `floor_ns()` after `start` (a CLOCK_MONOTONIC time). */
static void pad_from(long long start) {
    long long until = start + floor_ns();
    struct timespec t = {until / 1000000000, until % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) != 0) {
    }
}

/* Runs the real call named `name` (looked up once into `*real`), then pads. */
static int slowed(int (**real)(int), const char *name, int fd) {
    if (!*real) *real = (int (*)(int))dlsym(RTLD_NEXT, name);
    long long start = now_ns();
    int r = (*real)(fd);
    pad_from(start);
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
