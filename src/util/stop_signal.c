#include "stop_signal.h"
#include <signal.h>
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

void stop_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // reads and waits in progress carry on; the loop polls the flag
    for (int i = 0; i < 3; i++) sigaction(g_signals[i], &sa, &g_old[i]);
}

void stop_signal_restore(void) {
    for (int i = 0; i < 3; i++) sigaction(g_signals[i], &g_old[i], NULL);
}

int stop_signal_requested(void) { return g_requested; }
