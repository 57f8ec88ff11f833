/* Callgrind client requests for bench/instructions.py, loaded with ctypes.
 *
 * The script runs Python under `valgrind --tool=callgrind --instr-atstart=no`: imports run
 * uninstrumented, then each measured region is bracketed by cg_zero() and cg_dump(name), so that
 * every dump file holds the instructions of exactly one region.
 */
#include <valgrind/callgrind.h>

void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
int cg_running(void) { return RUNNING_ON_VALGRIND; }
