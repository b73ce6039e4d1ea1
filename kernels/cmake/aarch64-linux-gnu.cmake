# Cross-compile the kernels for arm64 with Debian's g++-aarch64-linux-gnu; ctest runs the
# tests under qemu-user. Override the emulated CPU with -DSPINQUANT_QEMU_CPU=cortex-a72
# (no dotprod, no i8mm) to test the fallbacks.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
if(NOT SPINQUANT_QEMU_CPU)
  set(SPINQUANT_QEMU_CPU max)
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;/usr/aarch64-linux-gnu;-cpu;${SPINQUANT_QEMU_CPU}")
