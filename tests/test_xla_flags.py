"""distill/xla_flags.py: decoding processes turn multi-threaded Eigen off unless the user chose."""
from __future__ import annotations

from distill.xla_flags import single_threaded_eigen


def test_the_flag_is_added_to_what_xla_flags_holds():
    environ = {}
    single_threaded_eigen(environ)
    assert environ == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    single_threaded_eigen(environ)
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false"


def test_a_users_own_choice_is_kept():
    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
    single_threaded_eigen(environ)
    assert environ == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
