// Judge a raw cache-tests result file with the suite's own rules (lib/results.mjs: test kinds,
// dependencies, setup failures) and print one JSON record per test, in suite order.
//   node classify.mjs SUITE_DIR RAW_RESULTS.json > classified.json
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [suiteDir, rawPath] = process.argv.slice(2)
const load = rel => import(pathToFileURL(path.resolve(suiteDir, rel)).href)
const suites = (await load('tests/index.mjs')).default
const { determineTestResult, resultTypes } = await load('test-engine/lib/results.mjs')
const raw = JSON.parse(fs.readFileSync(rawPath, 'utf8'))

const names = new Map(Object.entries(resultTypes).map(([name, type]) => [type, name]))
const records = []
for (const suite of suites) {
  for (const test of suite.tests) {
    const type = determineTestResult(suites, test.id, raw)
    // What the test did on its own, ignoring dependencies: shows what a ⚪ hides.
    const alone = determineTestResult(suites, test.id, raw, false)
    const result = raw[test.id]
    records.push({
      id: test.id,
      suite: suite.id,
      suite_name: suite.name,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      outcome: names.get(type) || 'unknown',
      outcome_alone: names.get(alone) || 'unknown',
      error: result === undefined || result === true ? null : result
    })
  }
}
process.stdout.write(JSON.stringify(records, null, 1) + '\n')
