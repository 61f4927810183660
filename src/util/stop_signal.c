#include "stop_signal.h"
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_requested = 0;
static struct sigaction g_old[3];
static const int g_signals[3] = {SIGINT, SIGTERM, SIGUSR1};

static void say(const char *s) {
    ssize_t r = write(STDERR_FILENO, s, strlen(s));
    (void)r;
}

static void on_signal(int sig) {
    if (g_requested) {
        say("\nvit: second signal: exiting now without a checkpoint\n");
        _exit(128 + sig);
    }
    g_requested = sig;
    say("\nvit: stop requested: finishing this step and writing a checkpoint (signal again to quit at once)\n");
}

// The handler runs on a stack of its own: oneDNN's JIT kernels may keep data below the stack
// pointer beyond the red zone, which a handler frame pushed onto the interrupted stack would
// overwrite (seen as heap corruption after a stop signal with the jit gemm kernels).
static _Alignas(16) uint8_t g_alt_stack[64 * 1024];

void stop_signal_install(void) {
    stack_t ss = {.ss_sp = g_alt_stack, .ss_size = sizeof g_alt_stack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_ONSTACK;  // reads and waits carry on; the loop polls the flag
    for (int i = 0; i < 3; i++) sigaction(g_signals[i], &sa, &g_old[i]);
}

void stop_signal_restore(void) {
    for (int i = 0; i < 3; i++) sigaction(g_signals[i], &g_old[i], NULL);
}

int stop_signal_requested(void) { return g_requested; }
