#include "atomic_file.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "util/status.h"

char *atomic_temp_path(const char *path) {
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (tmp) snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int atomic_commit(const char *tmp, const char *path, int *renamed) {
    *renamed = 0;
    if (rename(tmp, path) != 0)
        return vit_fail("%s: cannot save: renaming %s over it failed: %s", path, tmp, strerror(errno));
    *renamed = 1;
    // Make the rename itself durable. Some file systems cannot fsync a folder (EINVAL).
    int rc = 0;
    char *dir = dir_of(path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL))
            rc = vit_fail("%s: saved, but syncing its folder %s failed: %s", path, dir, strerror(errno));
        if (dfd >= 0) close(dfd);
        free(dir);
    }
    return rc;
}
