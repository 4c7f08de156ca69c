//! A length-prefixed borsh codec for libp2p request-response protocols.
//!
//! Each message is a 4-byte little-endian length followed by that many bytes of borsh.
//! The length is checked against the protocol's limit before anything is read or
//! allocated, so a peer cannot make us buffer more than the limit.

use std::io;
use std::marker::PhantomData;

use borsh::{BorshDeserialize, BorshSerialize};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// Codec for one protocol: requests `Req`, responses `Resp`, with size limits.
pub struct BorshCodec<Req, Resp> {
    request_max: usize,
    response_max: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> BorshCodec<Req, Resp> {
    /// A codec refusing requests over `request_max` and responses over `response_max`
    /// bytes.
    pub fn new(request_max: usize, response_max: usize) -> Self {
        BorshCodec {
            request_max,
            response_max,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for BorshCodec<Req, Resp> {
    fn clone(&self) -> Self {
        BorshCodec::new(self.request_max, self.response_max)
    }
}

async fn read_framed<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: BorshDeserialize,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
    borsh::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed message: {e}"),
        )
    })
}

fn encode_framed<M: BorshSerialize>(message: &M, max: usize) -> io::Result<Vec<u8>> {
    let bytes = borsh::to_vec(message)?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the limit of {max}",
                bytes.len()
            ),
        ));
    }
    let len = u32::try_from(bytes.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&bytes);
    Ok(framed)
}

async fn write_framed<T>(io: &mut T, framed: io::Result<Vec<u8>>) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    io.write_all(&framed?).await?;
    io.close().await
}

impl<Req, Resp> Codec for BorshCodec<Req, Resp>
where
    Req: BorshSerialize + BorshDeserialize + Send + 'static,
    Resp: BorshSerialize + BorshDeserialize + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io, self.request_max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io, self.response_max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, encode_framed(&request, self.request_max)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, encode_framed(&response, self.response_max)).await
    }
}
