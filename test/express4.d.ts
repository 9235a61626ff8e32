// Express 4 is installed as the npm alias `express4`; it shares Express 5's type declarations in tests.
declare module 'express4' {
  import express from 'express';
  export default express;
}
