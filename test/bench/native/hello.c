/* Native counterpart of the hello fixture, for the runc baseline. */
#include <unistd.h>

int main(void) {
    static const char msg[] = "hello from native\n";
    return write(1, msg, sizeof msg - 1) == sizeof msg - 1 ? 0 : 1;
}
