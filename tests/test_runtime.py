import platform

import pytest

from splat.runtime import tune_allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_allocator_settings_are_accepted_by_glibc():
    # mallopt returns 1 per accepted setting; a threshold above glibc's maximum would be refused.
    assert tune_allocator() is True
