// The committed schema under ajv in strict mode, and every shipped spec (read as YAML 1.2)
// against it: what an editor with yaml-language-server does. Run from a folder where
// `npm install ajv@8 yaml@2` was run: NODE_PATH=$PWD/node_modules node scripts/check_schema_ajv.js
const Ajv2020 = require("ajv/dist/2020"); const YAML = require("yaml"); const fs = require("fs");
const ajv = new Ajv2020({strict: true, allErrors: true});
const validate = ajv.compile(JSON.parse(fs.readFileSync(require("path").join(__dirname, "../schemas/pipeline.schema.json"))));
const files = require("child_process").execSync("find " + require("path").join(__dirname, "../pipelines") + " -name '*.yaml' | sort").toString().trim().split("\n");
let bad = 0;
for (const f of files) { const ok = validate(YAML.parse(fs.readFileSync(f, "utf8"))); if (!ok) { bad++; console.log(f, JSON.stringify(validate.errors.slice(0,2))); } }
console.log(`${files.length} specs, ${bad} invalid under ajv strict (YAML 1.2)`);
