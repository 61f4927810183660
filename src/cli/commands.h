// One function per subcommand; each returns the process exit status.
#pragma once
int cmd_train(int argc, char **argv);
int cmd_info(int argc, char **argv);
