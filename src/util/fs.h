// What a path names, for the places that only need to know whether it is a folder or a
// regular file (following symbolic links, as stat does; a missing path is neither).
#pragma once

int path_is_dir(const char *path);
int path_is_file(const char *path);
