"""Device profiles (data files) and detection of what this host can run. Torch-free."""

from sam3edge.devices.profiles import DeviceProfile, get_profile, list_profiles

__all__ = ["DeviceProfile", "get_profile", "list_profiles"]
