// Dependency rules, checked by `npm run lint`: no import cycle, and no layer imports a layer above it.
// Layers, top to bottom (README, Contributing): the entry points; http/ (everything that knows
// Express); jobs/ (the lifecycle); config/ (options: the default executor and view); views/;
// executors/; replay/ (the private server); stores/; model/ and util/ (the job model and helpers every layer shares).
const LAYERS = ['entry', 'http', 'jobs', 'config', 'views', 'executors', 'replay', 'stores', 'base'];
const PATHS = {
  entry: '^src/[^/]+\\.ts$|^src/testing/',
  http: '^src/http/',
  views: '^src/views/',
  jobs: '^src/jobs/',
  executors: '^src/executors/',
  replay: '^src/replay/',
  config: '^src/config/',
  stores: '^src/stores/',
  base: '^src/(model|util)/',
};

const upward = LAYERS.slice(1).map((layer, i) => ({
  name: `no-upward-from-${layer}`,
  comment: `${layer} is below ${LAYERS.slice(0, i + 1).join(', ')}: it must not import them`,
  severity: 'error',
  from: { path: PATHS[layer] },
  to: {
    path: LAYERS.slice(0, i + 1)
      .map((l) => PATHS[l])
      .join('|'),
  },
}));

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'import cycles make the layers meaningless', severity: 'error', from: {}, to: { circular: true } },
    ...upward,
    {
      name: 'lifecycle-without-express',
      comment: 'the job lifecycle, executors, replay and stores know Node, never Express',
      severity: 'error',
      from: { path: '^src/(jobs|executors|replay|stores|model|util)/' },
      to: { path: '(^|/)node_modules/(express|@types/express[^/]*)/' },
    },
    {
      name: 'optional-peers-in-their-entry-only',
      comment: 'ioredis, pg and bullmq are optional peers: only their own store or executor may import them',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(stores/(redis|postgres)|executors/bullmq)\\.ts$' },
      to: { path: '(^|/)node_modules/(ioredis|pg|bullmq)/' },
    },
    { name: 'no-orphans', severity: 'error', from: { orphan: true, path: '^src/', pathNot: '\\.d\\.ts$' }, to: {} },
  ],
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|coverage)/' },
  },
};
