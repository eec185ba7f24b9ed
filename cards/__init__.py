"""Recipe cards shipped with irpo (YAML files beside this one)."""
