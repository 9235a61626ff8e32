// MemoryStore passes the Store conformance suite.
import { MemoryStore } from '../src/index.js';
import { storeConformanceSuite } from '../src/testing/index.js';

storeConformanceSuite('MemoryStore', { create: () => new MemoryStore(), destroy: (store) => store.close?.(), expiryGraceMs: 100 });
