// Public exports of express-bgrs/testing: the conformance suite for Store implementations, and the fault-injecting wrapper.

export type { FaultOptions, FaultyStore, StoreMethod } from './faults.js';
export { InjectedFault, withFaults } from './faults.js';
export type { StoreSuiteOptions } from './store-suite.js';
export { storeConformanceSuite } from './store-suite.js';
