# Cross-compile for macOS on Apple silicon (arm64) with zig's clang (PyPI ziglang==0.17.0), which carries the
# macOS system library stubs and builds its own libc++, so no Apple SDK is needed. The binaries cannot run
# here: the build checks that everything compiles and links. zig is found from SPINQUANT_ZIG (a path to the
# zig executable, as a -D value or an environment variable) or on PATH; its cache of libc++ builds lies in
# ZIG_GLOBAL_CACHE_DIR when that is set.
set(CMAKE_SYSTEM_NAME Darwin)
set(CMAKE_SYSTEM_PROCESSOR arm64)
set(CMAKE_OSX_ARCHITECTURES arm64)
set(CMAKE_OSX_DEPLOYMENT_TARGET 14.0)  # the executorch wheel's macosx_14_0_arm64 tag

if(NOT SPINQUANT_ZIG)
  set(SPINQUANT_ZIG "$ENV{SPINQUANT_ZIG}")
endif()
if(NOT SPINQUANT_ZIG)
  find_program(SPINQUANT_ZIG zig)
endif()
if(NOT SPINQUANT_ZIG OR NOT EXISTS "${SPINQUANT_ZIG}")
  message(FATAL_ERROR "zig not found: pip install ziglang==0.17.0 and pass "
                      "-DSPINQUANT_ZIG=$(python -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')/zig")
endif()
set(ENV{SPINQUANT_ZIG} "${SPINQUANT_ZIG}")  # for CMake's try_compile projects, which read this file again

# CMake wants one executable per tool; zig takes the tool as its first argument, so each gets a small script.
set(_zig_tools "${CMAKE_BINARY_DIR}/zig-tools")
foreach(_tool IN ITEMS cc c++ ar ranlib)
  set(_args "${_tool}")
  if(_tool MATCHES "^c")
    set(_args "${_tool} -target aarch64-macos.14.0")
  endif()
  file(CONFIGURE OUTPUT "${_zig_tools}/${_tool}" CONTENT "#!/bin/sh\nexec \"${SPINQUANT_ZIG}\" ${_args} \"$@\"\n")
  file(CHMOD "${_zig_tools}/${_tool}" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
       WORLD_READ WORLD_EXECUTE)
endforeach()
set(CMAKE_C_COMPILER "${_zig_tools}/cc")
set(CMAKE_CXX_COMPILER "${_zig_tools}/c++")
set(CMAKE_AR "${_zig_tools}/ar" CACHE FILEPATH "zig ar")
set(CMAKE_RANLIB "${_zig_tools}/ranlib" CACHE FILEPATH "zig ranlib")

# CMake reads the macOS version from the host (sw_vers) to decide whether the linker knows -rpath; from Linux it
# finds none and would give no rpaths and absolute install names, so say it after its platform files have run:
# every macOS for arm64 has rpaths.
file(CONFIGURE OUTPUT "${_zig_tools}/rpath-rules.cmake" CONTENT
     "set(CMAKE_SHARED_LIBRARY_RUNTIME_C_FLAG -Wl,-rpath,)\nset(CMAKE_SHARED_LIBRARY_RUNTIME_CXX_FLAG -Wl,-rpath,)\n")
set(CMAKE_USER_MAKE_RULES_OVERRIDE "${_zig_tools}/rpath-rules.cmake")

# zig reads -mcpu, not -march: every Apple silicon core has dotprod (M1, the baseline), i8mm arrives with M2.
set(SPINQUANT_ARM_DOTPROD_FLAGS "-mcpu=apple_m1")
set(SPINQUANT_ARM_I8MM_FLAGS "-mcpu=apple_m2")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
