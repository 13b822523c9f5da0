"""Attribution methods; each module registers its methods on import."""
