"""The etcd source (DESIGN section 4): ``source.py`` holds ``EtcdSource``, the class the registry names."""
