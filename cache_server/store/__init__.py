"""Storage backends behind one interface (`CacheStore`), tested by one contract suite."""
