"""Process plumbing shared by the gRPC services: settings from flags, the gRPC server shell."""
