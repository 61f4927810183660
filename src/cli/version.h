// The version of vit, by hand at each release (nothing is derived from git at run time).
#pragma once
#define VIT_VERSION "0.9.0"
