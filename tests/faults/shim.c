/* Fault injection for hone's crash tests: an LD_PRELOAD shim that kills the process
 * (SIGKILL, as a power cut or the OOM killer would) just before its N-th call of one
 * kind of filesystem operation, or counts those calls.
 *
 *   HONE_FAULT_OP=fsync|unlink|rename   which calls to count (fsync includes fdatasync;
 *                                       unlink includes unlinkat and rmdir; rename
 *                                       includes renameat and renameat2)
 *   HONE_FAULT_AT=N                     kill before the N-th such call (1-based); 0 counts only
 *   HONE_FAULT_COUNT=PATH               where to write the number of calls seen, at exit
 *
 * The shim removes LD_PRELOAD from the environment when it loads, so the commands hone
 * starts run without it: only hone's own calls are counted.
 *
 * Build: cc -shared -fPIC -O2 -o shim.so shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int which = -1; /* 0 fsync, 1 unlink, 2 rename */
static long kill_at = 0;
static long seen = 0;
static const char *count_path = NULL;

static void write_count(void) {
    if (count_path == NULL) return;
    FILE *f = fopen(count_path, "w");
    if (f == NULL) return;
    fprintf(f, "%ld\n", __atomic_load_n(&seen, __ATOMIC_SEQ_CST));
    fclose(f);
}

__attribute__((constructor)) static void init(void) {
    const char *op = getenv("HONE_FAULT_OP");
    const char *at = getenv("HONE_FAULT_AT");
    count_path = getenv("HONE_FAULT_COUNT");
    if (count_path != NULL) count_path = strdup(count_path);
    if (op != NULL) {
        if (strcmp(op, "fsync") == 0) which = 0;
        else if (strcmp(op, "unlink") == 0) which = 1;
        else if (strcmp(op, "rename") == 0) which = 2;
    }
    if (at != NULL) kill_at = atol(at);
    unsetenv("LD_PRELOAD");
    atexit(write_count);
}

static void point(int kind) {
    if (kind != which) return;
    long n = __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST);
    if (kill_at > 0 && n == kill_at) {
        write_count();
        kill(getpid(), SIGKILL);
    }
}

#define NEXT(name) static __typeof__(name) *real_##name; \
    if (real_##name == NULL) real_##name = dlsym(RTLD_NEXT, #name)

int fsync(int fd) { NEXT(fsync); point(0); return real_fsync(fd); }
int fdatasync(int fd) { NEXT(fdatasync); point(0); return real_fdatasync(fd); }
int unlink(const char *path) { NEXT(unlink); point(1); return real_unlink(path); }
int unlinkat(int dirfd, const char *path, int flags) {
    NEXT(unlinkat); point(1); return real_unlinkat(dirfd, path, flags);
}
int rmdir(const char *path) { NEXT(rmdir); point(1); return real_rmdir(path); }
int rename(const char *from, const char *to) { NEXT(rename); point(2); return real_rename(from, to); }
int renameat(int fd1, const char *from, int fd2, const char *to) {
    NEXT(renameat); point(2); return real_renameat(fd1, from, fd2, to);
}
int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags) {
    NEXT(renameat2); point(2); return real_renameat2(fd1, from, fd2, to, flags);
}
