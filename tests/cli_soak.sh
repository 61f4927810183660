#!/bin/sh
# The chaos soak of tests/soak.sh in its short form, for the suite: 10 faults in one process,
# then 2 rank kills under mpirun. A long one by hand: SOAK_FAULTS=200 sh tests/soak.sh
SOAK_FAULTS=${SOAK_FAULTS:-10} SOAK_MPI_FAULTS=${SOAK_MPI_FAULTS:-2} exec sh "$(dirname "$0")/soak.sh"
