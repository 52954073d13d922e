/* Native counterpart of the spin fixture: a tight loop with no system call.
 * As PID 1 of its PID namespace a process ignores SIGTERM unless it handles
 * it, so it exits on SIGTERM the way a wasm guest is ended: status 143. */
#include <signal.h>
#include <unistd.h>

static void on_term(int sig) { _exit(128 + sig); }

int main(void) {
    volatile unsigned long n = 0;
    signal(SIGTERM, on_term);
    for (;;)
        n++;
}
