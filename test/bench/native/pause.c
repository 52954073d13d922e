/* Native counterpart of the sleep fixture: waits for a signal forever. */
#include <unistd.h>

int main(void) {
    for (;;)
        pause();
}
