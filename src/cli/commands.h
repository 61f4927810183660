// One function per subcommand; each returns the process exit status.
#pragma once
int cmd_train(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_evaluate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_version(int argc, char **argv);
// argv[0] of the process, for commands that print a command line to run next.
extern const char *g_program;
