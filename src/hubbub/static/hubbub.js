/*
 * hubbub.js: a small client of the Centrifugo client protocol (v2, JSON), written for hubbub.
 * No dependencies, no build step. Works in browsers (and anywhere WebSocket exists).
 *
 *   const client = new Hubbub.Client("ws://127.0.0.1:8000/connection/websocket", {token: "..."});
 *   client.on("state", (state) => console.log(state));          // "connecting" | "connected" | "disconnected"
 *   const sub = client.subscribe("chat:room", {
 *     onPublication: (pub) => console.log(pub.offset, pub.data),  // pub: {data, offset, info}
 *     onSubscribed: (ctx) => console.log(ctx.recovered),          // the subscribe reply
 *     onJoin: (info) => {}, onLeave: (info) => {},
 *   });
 *   client.connect();
 *   await client.publish("chat:room", {text: "hi"});              // -> {offset, epoch}
 *   await client.presence("chat:room");                           // -> {presence: {clientId: info}}
 *   await client.presenceStats("chat:room");                      // -> {num_clients, num_users}
 *   await client.history("chat:room", {limit: 10});               // -> {publications, offset, epoch}
 *   await client.rpc("method", data);                             // -> {data}
 *   client.disconnect();
 *
 * Errors: promises reject with an Error carrying `code` (the protocol error code) and `temporary`.
 * Reconnects: exponential backoff with jitter (0.5 s .. 20 s); close codes 3500-3999 and 4500-4999
 * mean "don't reconnect". Subscriptions are restored after a reconnect, recovering missed
 * publications from the last offset when the server says the subscription is recoverable.
 */
(function (global) {
  "use strict";

  class HubbubError extends Error {
    constructor(code, message, temporary) {
      super(`${code}: ${message}`);
      this.code = code;
      this.temporary = !!temporary;
    }
  }

  class Subscription {
    constructor(client, channel, handlers) {
      this.client = client;
      this.channel = channel;
      this.handlers = handlers || {};
      this.state = "unsubscribed";
      this.recoverable = false;
      this.epoch = "";
      this.offset = 0;
    }

    publish(data) {
      return this.client.publish(this.channel, data);
    }

    unsubscribe() {
      this.client._unsubscribe(this);
    }

    _params() {
      const params = {channel: this.channel};
      if (this.handlers.token) params.token = this.handlers.token;
      if (this.recoverable && this.epoch) {
        params.recover = true;
        params.epoch = this.epoch;
        params.offset = this.offset;
      }
      return params;
    }

    _subscribed(reply) {
      this.state = "subscribed";
      if (reply.recoverable) this.recoverable = true;
      if (reply.epoch !== undefined) this.epoch = reply.epoch;
      if (reply.offset !== undefined) this.offset = reply.offset;
      if (this.handlers.onSubscribed) this.handlers.onSubscribed(reply);
      for (const pub of reply.publications || []) this._publication(pub);
    }

    _publication(pub) {
      if (pub.offset) this.offset = pub.offset;
      if (this.handlers.onPublication) this.handlers.onPublication(pub);
    }
  }

  class Client {
    /**
     * @param {string} url  ws(s)://host:port/connection/websocket
     * @param {object} options  {token, getToken: async () => token, name, debug}
     */
    constructor(url, options) {
      this.url = url;
      this.options = options || {};
      this.state = "disconnected";
      this.clientId = "";
      this._ws = null;
      this._nextId = 0;
      this._waiting = new Map();
      this._subs = new Map();
      this._listeners = {};
      this._attempt = 0;
      this._reconnectTimer = null;
      this._wanted = false;
    }

    on(event, fn) {
      (this._listeners[event] = this._listeners[event] || []).push(fn);
      return this;
    }

    _emit(event, ...args) {
      for (const fn of this._listeners[event] || []) {
        try { fn(...args); } catch (err) { console.error(err); }
      }
    }

    _setState(state, detail) {
      this.state = state;
      this._emit("state", state, detail);
      this._emit(state, detail);
    }

    connect() {
      this._wanted = true;
      if (this._ws) return;
      this._open();
    }

    disconnect() {
      this._wanted = false;
      clearTimeout(this._reconnectTimer);
      if (this._ws) this._ws.close(1000);
    }

    subscribe(channel, handlers) {
      let sub = this._subs.get(channel);
      if (!sub) {
        sub = new Subscription(this, channel, handlers);
        this._subs.set(channel, sub);
        if (this.state === "connected") this._subscribe(sub);
      }
      return sub;
    }

    publish(channel, data) { return this._call("publish", {channel, data}); }
    history(channel, opts) { return this._call("history", Object.assign({channel}, opts || {})); }
    presence(channel) { return this._call("presence", {channel}); }
    presenceStats(channel) { return this._call("presence_stats", {channel}); }
    rpc(method, data) { return this._call("rpc", {method, data}); }
    send(data) { this._send([{send: {data}}]); }

    async _open() {
      this._setState("connecting");
      let token = this.options.token || "";
      if (!token && this.options.getToken) {
        try { token = await this.options.getToken(); } catch (err) { this._scheduleReconnect(); return; }
      }
      const ws = new WebSocket(this.url);
      this._ws = ws;
      ws.onopen = () => {
        const params = {name: this.options.name || "hubbub.js"};
        if (token) params.token = token;
        this._call("connect", params).then((reply) => {
          this.clientId = reply.client;
          this._attempt = 0;
          this._setState("connected", reply);
          for (const sub of this._subs.values()) this._subscribe(sub);
        }, (err) => this._emit("error", err));
      };
      ws.onmessage = (event) => {
        for (const line of String(event.data).split("\n")) {
          if (line.trim()) this._dispatch(JSON.parse(line));
        }
      };
      ws.onclose = (event) => {
        this._ws = null;
        for (const [, waiter] of this._waiting) waiter.reject(new HubbubError(event.code, "connection closed", true));
        this._waiting.clear();
        for (const sub of this._subs.values()) sub.state = "subscribing";
        this._setState("disconnected", {code: event.code, reason: event.reason});
        const permanent = (event.code >= 3500 && event.code < 4000) || (event.code >= 4500 && event.code < 5000);
        if (this._wanted && !permanent) this._scheduleReconnect();
      };
    }

    _scheduleReconnect() {
      const cap = Math.min(20000, 500 * Math.pow(2, this._attempt++));
      this._reconnectTimer = setTimeout(() => { if (this._wanted && !this._ws) this._open(); },
        Math.random() * cap);
    }

    _subscribe(sub) {
      sub.state = "subscribing";
      this._call("subscribe", sub._params()).then((reply) => sub._subscribed(reply),
        (err) => { if (sub.handlers.onError) sub.handlers.onError(err); });
    }

    _unsubscribe(sub) {
      this._subs.delete(sub.channel);
      sub.state = "unsubscribed";
      if (this.state === "connected") this._call("unsubscribe", {channel: sub.channel}).catch(() => {});
    }

    _call(method, params) {
      return new Promise((resolve, reject) => {
        if (!this._ws || this._ws.readyState !== 1) {
          reject(new HubbubError(0, "not connected", true));
          return;
        }
        const id = ++this._nextId;
        this._waiting.set(id, {resolve, reject});
        this._send([{id, [method]: params}]);
      });
    }

    _send(commands) {
      if (this._ws && this._ws.readyState === 1) {
        this._ws.send(commands.map((c) => JSON.stringify(c)).join("\n"));
      }
    }

    _dispatch(msg) {
      if (msg.id) {
        const waiter = this._waiting.get(msg.id);
        if (!waiter) return;
        this._waiting.delete(msg.id);
        if (msg.error) waiter.reject(new HubbubError(msg.error.code, msg.error.message, msg.error.temporary));
        else {
          const key = Object.keys(msg).find((k) => k !== "id");
          waiter.resolve(key ? msg[key] : {});
        }
        return;
      }
      if (!msg.push) {  // a server ping: answer with a pong
        this._send([{}]);
        return;
      }
      const push = msg.push;
      const sub = this._subs.get(push.channel);
      if (push.pub && sub) sub._publication(push.pub);
      else if (push.join && sub && sub.handlers.onJoin) sub.handlers.onJoin(push.join.info);
      else if (push.leave && sub && sub.handlers.onLeave) sub.handlers.onLeave(push.leave.info);
      else if (push.unsubscribe && sub) {
        sub.state = "unsubscribed";
        if (push.unsubscribe.code >= 2500) this._subscribe(sub);
      } else if (push.subscribe) {
        const server = this.subscribe(push.channel, {});
        server._subscribed(push.subscribe);
      }
      this._emit("push", push);
    }
  }

  const Hubbub = {Client, Subscription, HubbubError};
  if (typeof module !== "undefined" && module.exports) module.exports = Hubbub;
  else global.Hubbub = Hubbub;
})(typeof window !== "undefined" ? window : globalThis);
