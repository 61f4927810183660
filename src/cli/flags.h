// The flag table: names (with the recipe's spellings), defaults and help text in one place.
// Parsing, --help and the "set by the user" bookkeeping are all driven by it.
#pragma once
#include "options.h"

typedef enum { FLAG_INT, FLAG_LONG, FLAG_FLOAT, FLAG_STRING, FLAG_BOOL } FlagType;

// The commands, as bits of Flag.commands.
enum {
    CMD_TRAIN = 1 << 0,
    CMD_EVALUATE = 1 << 1,
    CMD_PREDICT = 1 << 2,
    CMD_EXPORT = 1 << 3,
    CMD_PREP = 1 << 4,
    CMD_INFO = 1 << 5,
};

typedef struct {
    const char *name;       // without the leading "--"
    const char *alias;      // another accepted spelling ("-d", "--dataset"), or NULL
    FlagType type;
    unsigned offset;        // into Options
    unsigned size;          // of the field (strings)
    const char *def;        // default as text ("" = empty / unset)
    const char *help;
    int ignored;            // accepted for compatibility and ignored with a note
    unsigned commands;      // CMD_* bits: the commands whose result the flag can change, which their
                            // --help lists (every command still accepts every flag)
} Flag;

// ParsedOptions.set: given on the command line, or taken from the run a checkpoint recorded
// (a resume: the value in effect there, when it was not the default).
enum { FLAG_SET_BY_USER = 1, FLAG_SET_BY_CHECKPOINT = 2 };

typedef struct {
    Options o;
    unsigned char set[128];  // set[i]: how flag i got its value (FLAG_SET_*; 0 = its default)
    char **positional;       // arguments that are not flags (predict's images), in order
    int n_positional;
} ParsedOptions;

extern const Flag g_flags[];
extern const int g_flag_count;

// Fills defaults, then parses argv (after the subcommand). Errors name the flag. Arguments
// that are not flags are collected in p->positional (pointers into argv; free the array with
// flags_free); commands that take none refuse them with flags_no_positional.
int flags_parse(ParsedOptions *p, int argc, char **argv);
int flags_no_positional(const ParsedOptions *p);
void flags_free(ParsedOptions *p);
// The current value of flag i as text (for checkpoint metadata).
void flags_value_text(const ParsedOptions *p, int i, char *buf, unsigned n);
// Whether the flag called `name` has a value other than its default's source: the user gave
// it, or a resumed checkpoint recorded it (FLAG_SET_BY_CHECKPOINT).
int flags_given(const ParsedOptions *p, const char *name);
// Only the command line: the user typed the flag.
int flags_on_command_line(const ParsedOptions *p, const char *name);
// The index of the flag called `name` in g_flags, -1 for none.
int flags_index(const char *name);
// Sets flag i from text (a checkpoint's recorded value); the caller marks p->set[i].
int flags_set_text(ParsedOptions *p, int i, const char *text);
// Whether two texts are the same value of flag i ("1e-3" and "0.001" are).
int flags_same_text(int i, const char *a, const char *b);
// Usage line, summary and the flags of `command` (its first word: "predict IMAGE..." lists
// predict's flags); a name that is no command lists them all.
void flags_print_help(const char *command, const char *summary);
