// drayage entry point: argument parsing and wiring. Serving is filled in as modules land.
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    (void)argc;
    (void)argv;
    std::fprintf(stderr, "drayage: not wired yet\n");
    return 1;
}
