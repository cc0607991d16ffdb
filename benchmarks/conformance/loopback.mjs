// Preloaded into the cache-tests origin server (`node --import`): the suite's server calls
// `listen(port)`, which binds every interface; a test origin must only be reachable locally.
import net from 'node:net'

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
