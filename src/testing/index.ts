// Public exports of express-bgrs/testing: the conformance suite for Store implementations.
export { storeConformanceSuite } from './store-suite.js';
export type { StoreSuiteOptions } from './store-suite.js';
