// The unchanged E2B JavaScript SDK against Aegis's E2B listener, run by tests/e2b.rs with
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set. The last line is "all checks passed".
import { Sandbox, CommandExitError, NotFoundError } from 'e2b'

function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`)
  console.log(`ok   ${what}`)
}

const sbx = await Sandbox.create({ envs: { TOP: 'from-js' }, metadata: { role: 'js' }, timeoutMs: 600_000 })
check(await sbx.isRunning(), `Sandbox.create gives a running sandbox ${sbx.sandboxId}`)
const r = await sbx.commands.run('echo "out-$TOP"; echo err >&2; pwd', { cwd: '/tmp' })
check(r.exitCode === 0 && r.stdout === 'out-from-js\n/tmp\n', `commands.run stdout, env and cwd: ${JSON.stringify(r.stdout)}`)
check(r.stderr === 'err\n', 'commands.run stderr')
try {
  await sbx.commands.run('exit 4')
  check(false, 'a failing command throws')
} catch (e) {
  check(e instanceof CommandExitError && e.exitCode === 4, 'a failing command throws CommandExitError')
}
await sbx.files.write('/home/user/js.txt', 'from js\n')
check((await sbx.files.read('/home/user/js.txt')) === 'from js\n', 'files.write and files.read')
const blob = new Uint8Array(1024 * 1024).map((_, i) => (i * 7) % 256)
await sbx.files.write('/tmp/blob.bin', blob.buffer)
const back = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' })
check(back.length === blob.length && back.every((b, i) => b === blob[i]), '1 MiB of bytes written and read back identical')
const names = (await sbx.files.list('/home/user')).map((e) => e.name)
check(names.includes('js.txt'), `files.list: ${names}`)
check(await sbx.files.exists('/home/user/js.txt'), 'files.exists')
await sbx.files.remove('/home/user/js.txt')
check(!(await sbx.files.exists('/home/user/js.txt')), 'files.remove')
const h = await sbx.commands.run('sleep 600', { background: true })
check((await sbx.commands.list()).some((p) => p.pid === h.pid), 'commands.list has the background command')
check(await sbx.commands.kill(h.pid), 'commands.kill')
const listed = await Sandbox.list({ query: { metadata: { role: 'js' } } }).nextItems()
check(listed.length === 1 && listed[0].sandboxId === sbx.sandboxId, 'Sandbox.list filtered by metadata')
try {
  await Sandbox.connect('no-such-sandbox')
  check(false, 'an unknown sandbox throws')
} catch (e) {
  check(e instanceof NotFoundError, `an unknown sandbox id throws NotFoundError`)
}
check(await Sandbox.kill(sbx.sandboxId), 'Sandbox.kill')
console.log('all checks passed')
