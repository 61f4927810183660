// Stopping a run cleanly: the first SIGINT, SIGTERM or SIGUSR1 asks the training loop to
// finish the optimizer step in progress, write a checkpoint and exit; a second one ends
// the process at once. (mpirun forwards SIGUSR1 to every rank and turns SIGINT/SIGTERM
// into a kill, so under MPI the clean stop is `kill -USR1 <mpirun pid>`.)
#pragma once

void stop_signal_install(void);
void stop_signal_restore(void);
// The signal that asked for a stop, or 0.
int stop_signal_requested(void);
