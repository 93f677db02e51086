# Sourced by the launchers (launch/mpirun.sh, launch/slurm/mtrec.sbatch): what a job's exit code
# says, and whether a restart may cure the failure. The codes are mtrec-worker's (README, "Exit
# codes"); a code above 192 is the launcher's own (mpirun or srun lost a daemon, a node).
# shellcheck shell=bash

# cause CODE: the failure in words.
cause() {
  case $1 in
    0) echo "done" ;;
    1) echo "an error (config, data, file, numeric): not retryable" ;;
    2) echo "a usage error: not retryable" ;;
    70) echo "a rank saw no progress for dist.timeout_s (a stalled collective)" ;;
    71) echo "a rank was lost (its process died or its host became unreachable)" ;;
    72) echo "a transport (MPI/NCCL) error" ;;
    75) echo "stopped by a signal after a checkpoint: not retried" ;;
    101) echo "a panic (a bug): not retryable" ;;
    *) if (($1 > 128 && $1 <= 128 + 64)); then
         echo "killed by signal $(($1 - 128))"
       else
         echo "the launcher lost a daemon (a node died or stopped answering; mpirun's 'unable to reliably start' message means that one ended)"
       fi ;;
  esac
}

# retryable CODE: true when a restart from the last checkpoint may cure the failure.
retryable() { case $1 in 0 | 1 | 2 | 75 | 101) return 1 ;; *) return 0 ;; esac; }
